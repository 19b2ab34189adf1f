"""Few-shot curve: top-1 of prototypes and kNN with n train items per class, n = 1, 2, 4, …, all, over seeds."""

from __future__ import annotations

import numpy as np

from embedsearch.evaluate.methods.base import Method, register
from embedsearch.evaluate.methods.knn import Bank, ExactSims, knn_neighbours, knn_scores
from embedsearch.evaluate.methods.prototypes import prototype_scores, prototypes

FEWSHOT_SEEDS = 5
FEWSHOT_K = 20
BLOCK_BYTES = 2 ** 27  # test rows are scored in blocks of at most this many bytes of scores


def fewshot_curve(xtr, ytr, xte, yte, C, seed, knn_t, n_seeds: int = FEWSHOT_SEEDS, k: int = FEWSHOT_K) -> list[dict]:
    """Top-1 of prototypes and kNN (k neighbours, temperature knn_t) with n train items per class,
    n ∈ {1, 2, 4, …, all}, each over `n_seeds` seeded samples (one for all).

    Seed s draws one random order of each class's train items (seed + s); the n-shot sample is the first n of each
    order, so a seed's samples are nested (its 2-shot set holds its 1-shot set). One sort per seed, whatever the
    number of classes; the "all" step searches the train rows as stored, without a copy."""
    from embedsearch.core import progress

    rows = max(1, BLOCK_BYTES // (8 * C))
    ytr = np.asarray(ytr, np.int64)
    counts = np.bincount(ytr, minlength=C)
    largest = int(counts.max())
    shots = [n for n in (2 ** i for i in range(20)) if n < largest] + [largest]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    orders = []  # per seed: train positions sorted by (class, random key), and each one's rank in its class
    for s in range(n_seeds if len(shots) > 1 else 1):
        order = np.lexsort((np.random.default_rng(seed + s).random(len(ytr)), ytr))
        orders.append((order, np.arange(len(ytr)) - starts[ytr[order]]))
    acc = {n: ([], []) for n in shots}
    steps = [(n, s) for n in shots for s in range(n_seeds if n < largest else 1)]
    with progress.bar(len(steps), "few-shot: shots × seeds", unit="sample") as bar:
        for n, s in steps:
            if n == largest:  # all items: no sampling, one seed is the answer
                xb, yb = xtr, ytr
            else:
                order, rank = orders[s]
                pick = np.sort(order[rank < n])
                xb, yb = xtr[pick], ytr[pick]
            protos, has = prototypes(xb, yb, C)
            kk = min(k, len(yb))
            bank = Bank(xb)  # normalized once for the search and the re-scoring of near-ties
            sims, idx = knn_neighbours(bank, xte, kk)
            labels = yb[idx]
            hit_p = hit_k = 0
            for a in range(0, len(yte), rows):  # (rows × classes) scores at a time, whatever the classes
                b = slice(a, a + rows)
                hit_p += int((prototype_scores(protos, has, xte[b]).argmax(1) == yte[b]).sum())
                sc = knn_scores(sims[b], labels[b], kk, C, knn_t, ExactSims(bank, xte[b], idx[b]), (1,))
                hit_k += int((sc.argmax(1) == yte[b]).sum())
            acc[n][0].append(hit_p / len(yte))
            acc[n][1].append(hit_k / len(yte))
            bar.update()
            bar.set_postfix_str(f"{n} shots, seed {s}")
    return [{"shots": n if n < largest else "all", "prototypes_mean": float(np.mean(p)),
             "prototypes_std": float(np.std(p)), "knn_mean": float(np.mean(q)), "knn_std": float(np.std(q)),
             "seeds": len(p)} for n, (p, q) in acc.items()]


@register
class Fewshot(Method):
    name = "fewshot"
    kind = "curve"

    def estimate(self, shape, rates, ctx):
        # a kNN search per (shots, seed) on n·C·shots rows: dominated by the "all" step (one full search) and
        # the halvings below it (as much again, five seeds each)
        return (1 + 5) * 1.9 * 2 * shape.n * shape.m * shape.d / rates.flops

    def curve(self, train, xte, yte, ctx) -> tuple[dict, list[dict]]:
        """(params, curve)."""
        params = {"seeds": FEWSHOT_SEEDS, "knn_k": FEWSHOT_K, "knn_T": ctx.knn_t,
                  "shots": "1, 2, 4, … per class, then all",
                  "sampling": "per seed one random order of each class, the first n taken (nested samples)"}
        return params, fewshot_curve(train.x, train.y, xte, yte, train.n_classes, train.seed, ctx.knn_t)
