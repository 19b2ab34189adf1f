"""Few-shot curve: top-1 of prototypes and kNN with n train items per class, n = 1, 2, 4, …, all, over seeds."""

from __future__ import annotations

import numpy as np

from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate.methods.base import Method, register
from embedsearch.evaluate.methods.knn import knn_scores
from embedsearch.evaluate.methods.prototypes import prototype_scores, prototypes
from embedsearch.query.exact import Bank, ExactSims, candidate_count, certify_cutoffs, gpu_bank

FEWSHOT_SEEDS = 5
FEWSHOT_K = 20
BLOCK_BYTES = 2 ** 27  # test rows are scored by prototypes in blocks of at most this many bytes of scores
SCORE_BYTES = 2 ** 28  # the (test rows × train rows) float32 similarities the kNN curve holds at a time
MIN_ROWS = 64  # test rows per similarity block, however large the train set (a GEMM needs some rows)


def fewshot_curve(xtr, ytr, xte, yte, C, seed, knn_t, n_seeds: int = FEWSHOT_SEEDS, k: int = FEWSHOT_K) -> list[dict]:
    """Top-1 of prototypes and kNN (k neighbours, temperature knn_t) with n train items per class,
    n ∈ {1, 2, 4, …, all}, each over `n_seeds` seeded samples (one for all).

    Seed s draws one random order of each class's train items (seed + s); the n-shot sample is the first n of each
    order, so a seed's samples are nested (its 2-shot set holds its 1-shot set). Ordered by rank in class, a seed's
    train items have every n-shot sample as a prefix, so the kNN curve needs the test × train similarities only
    once (`_knn_hits`): each sample's neighbours are a top-k over a prefix of the seed's columns, certified exact
    like `knn_neighbours`'s."""
    from embedsearch.core import progress

    ytr, yte = np.asarray(ytr, np.int64), np.asarray(yte)
    counts = np.bincount(ytr, minlength=C)
    largest = int(counts.max())
    shots = [n for n in (2 ** i for i in range(20)) if n < largest] + [largest]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    seeds = []  # per seed: train positions by (rank in class, position), so rank < n is a prefix
    for s in range(n_seeds if len(shots) > 1 else 1):
        order = np.lexsort((np.random.default_rng(seed + s).random(len(ytr)), ytr))
        rank = np.empty(len(ytr), np.int64)
        rank[order] = np.arange(len(ytr)) - starts[ytr[order]]
        seeds.append(np.lexsort((np.arange(len(ytr)), rank)))
    steps = [(n, s) for n in shots for s in range(n_seeds if n < largest else 1)]
    size = {n: int(np.minimum(counts, n).sum()) for n in shots}  # the n-shot sample's size, any seed
    bank = Bank(xtr)  # normalized once for every block and sample
    qq = l2_normalize(xte)
    hits_p = {}
    step = max(1, BLOCK_BYTES // (8 * C))  # (rows × classes) prototype scores at a time, whatever the classes
    with progress.bar(len(steps), "few-shot: prototypes", unit="sample") as bar:
        for n, s in steps:
            pick = np.sort(seeds[s][:size[n]])
            protos, has = (prototypes(bank.whole[pick], ytr[pick], C, normalized=True) if bank.whole is not None
                           else prototypes(xtr[pick], ytr[pick], C))
            hits_p[n, s] = sum(int((prototype_scores(protos, has, qq[b:b + step], normalized=True).argmax(1)
                                    == yte[b:b + step]).sum()) for b in range(0, len(yte), step))
            bar.update()
    rows = min(len(yte), max(MIN_ROWS, SCORE_BYTES // (4 * max(1, len(ytr)))))
    blocks = range(0, len(yte), rows)
    hits_k = dict.fromkeys(steps, 0)
    buffers = _Buffers(rows, len(ytr))
    with progress.bar(len(blocks) * len(steps), "few-shot: kNN, test blocks × samples", unit="sample") as bar:
        for a in blocks:
            _knn_hits(bank, qq[a:a + rows], xte[a:a + rows], yte[a:a + rows], ytr, seeds, steps, size, C, k, knn_t,
                      hits_k, buffers, bar)
    out = []
    for n in shots:
        p = [hits_p[n, s] / len(yte) for m, s in steps if m == n]
        q = [hits_k[n, s] / len(yte) for m, s in steps if m == n]
        out.append({"shots": n if n < largest else "all", "prototypes_mean": float(np.mean(p)),
                    "prototypes_std": float(np.std(p)), "knn_mean": float(np.mean(q)), "knn_std": float(np.std(q)),
                    "seeds": len(p)})
    return out


def _knn_hits(bank, qq, xq, yq, ytr, seeds, steps, size, C, k, knn_t, hits, buffers, bar) -> None:
    """Add each sample's kNN hits on one block of test rows to `hits`: the block's similarities to every train
    item once, then per seed its columns in prefix order, and per n-shot sample a top-K over the first size[n]
    (float32, then `certify_cutoffs` settles near-ties at k in float64, the list lengthened where a band reaches
    its end) and the weighted vote with near-tied votes recounted in float64 (`knn_scores`). Ties go to the lower
    train position, as a search of the sample itself orders them."""
    import torch

    sims_all = _similarities(bank, qq, buffers)
    for s, perm in enumerate(seeds):
        cols = torch.from_numpy(perm).to(sims_all.device)
        seed_buf = buffers.get("seed", len(qq), sims_all.device)
        sims_seed = torch.index_select(sims_all, 1, cols, out=seed_buf)  # the seed's columns in prefix order
        for n in (n for n, t in steps if t == s):
            m = size[n]
            kk = min(k, m)
            K = min(candidate_count(kk), m)
            sims, idx = _top(sims_seed[:, :m], perm, K)
            sims, idx, widen = certify_cutoffs(bank, qq, sims, idx, (kk,), size=m)
            while len(widen):  # near-ties reach the list's end: a longer list for those rows
                K = min(4 * K, m)
                ws, wi = _top(sims_seed[torch.from_numpy(widen).to(cols.device), :m], perm, K)
                ws, wi, again = certify_cutoffs(bank, qq[widen], ws, wi, (kk,), size=m)
                sims[widen], idx[widen] = ws[:, :sims.shape[1]], wi[:, :idx.shape[1]]
                widen = widen[again]
            sims, idx = sims[:, :kk], idx[:, :kk]
            sc = knn_scores(sims, ytr[idx], kk, C, knn_t, ExactSims(bank, xq, idx), (1,))
            hits[n, s] += int((sc.argmax(1) == yq).sum())
            bar.update()


class _Buffers:
    """The two (test rows × train rows) float32 blocks, allocated once for all test blocks (first-touch page
    faults of fresh 256 MB arrays cost as much as filling them)."""

    def __init__(self, rows: int, n: int):
        self.rows, self.n, self._got = rows, n, {}

    def get(self, name: str, m: int, device):
        import torch

        if name not in self._got:
            self._got[name] = torch.empty((self.rows, self.n), dtype=torch.float32, device=device)
        return self._got[name][:m]


def _similarities(bank: Bank, qq: np.ndarray, buffers: _Buffers):
    """float32 (queries × bank) cosine similarities as a torch tensor: on the GPU when the bank is there (the
    `gpu_bank` seam, TF32 off so the float32 error bound holds), else on the CPU a bank chunk at a time."""
    import torch

    gpu = gpu_bank(bank)
    if gpu is not None:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return torch.mm(torch.from_numpy(qq).cuda(), gpu.T, out=buffers.get("sims", len(qq), gpu.device))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    q, out = torch.from_numpy(qq), buffers.get("sims", len(qq), "cpu")
    if bank.whole is not None:
        return torch.mm(q, torch.from_numpy(bank.whole).T, out=out)
    for a, b in bank.chunks():
        out[:, a:a + len(b)] = q @ torch.from_numpy(b).T
    return out


def _top(sims, perm: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K of each row of a prefix of a seed's columns → (float64 similarities, train positions), best first,
    equal similarities by lower train position."""
    import torch

    s, i = torch.topk(sims, K, dim=1, sorted=False)
    s, pos = s.double().cpu().numpy(), perm[i.cpu().numpy()]
    o = np.lexsort((pos, -s), axis=1)
    return np.take_along_axis(s, o, 1), np.take_along_axis(pos, o, 1)


@register
class Fewshot(Method):
    name = "fewshot"
    order = 70
    kind = "curve"

    def estimate(self, shape, rates, ctx):
        # one (m × d)·(d × n) similarity product, then per seed a gather of the n columns and top-k over prefixes
        # of ~1.6 n: ~160 bytes' worth of streaming bandwidth per (test, train) pair and seed with the prototypes'
        # sums (29–33 s measured at 10,000 × 50,000 × 2,048 on 2 cores, 10–16 s of it the product)
        return 2 * shape.n * shape.m * shape.d / rates.flops + FEWSHOT_SEEDS * shape.n * shape.m * 160 / rates.bandwidth

    def curve(self, train, xte, yte, ctx) -> tuple[dict, list[dict]]:
        """(params, curve)."""
        params = {"seeds": FEWSHOT_SEEDS, "knn_k": FEWSHOT_K, "knn_T": ctx.knn_t,
                  "shots": "1, 2, 4, … per class, then all",
                  "sampling": "per seed one random order of each class, the first n taken (nested samples)",
                  "knn_search": "exact within each sample (float32 similarities, near-ties settled in float64)",
                  "prototype": "normalize(mean of L2-normalized sample vectors)"}
        return params, fewshot_curve(train.x, train.y, xte, yte, train.n_classes, train.seed, ctx.knn_t)
