"""Exact cosine search over a bank of vectors: top-k, certified top-k and threshold joins.

The one exact-search engine evaluation, insight and the reports use (evaluate/methods/knn.py votes over its
neighbours; insight's duplicates, leaks, outliers and label issues, the map and the HTML report search with
it).

The neighbour search is an exact k-NN in float32 (FAISS's or torch's, whichever is faster on this CPU; torch's on
a GPU); where float32 error could change the neighbour set at a cut-off, or the vote's top classes, the near-tied
candidates are settled in float64 (`certify_cutoffs`, `ExactSims`), so the votes equal a float64 computation's
whatever the BLAS, blocking or thread count. The threshold joins (`similar_pairs`: every pair at or above a
cosine; `nearest_in`: each query's most similar bank row at or above it) are exact float32 products a tile at a
time. (store/faiss_index.py keeps its own streamed exact top-k over (ids, vectors) chunks, `exact_topk`: the
store sits below this layer and its fp16 search uses it.)
"""

from __future__ import annotations

import logging

import numpy as np

from embedsearch.core import progress
from embedsearch.core.vectors import l2_normalize

log = logging.getLogger(__name__)


BANK_BYTES = 2 ** 30  # a train bank whose normalized float32 copy is larger is searched a chunk at a time
BANK_CHUNK = 2 ** 16  # rows per chunk when streaming


class Bank:
    """The train vectors as a search bank: L2-normalized float32, held whole when that copy fits BANK_BYTES,
    otherwise normalized a chunk at a time from the stored (e.g. float16) array for each search, so memory stays
    bounded at any bank size."""

    def __init__(self, x: np.ndarray):
        self.raw = x
        self.n, self.d = x.shape
        self.whole = l2_normalize(x) if self.n * self.d * 4 <= BANK_BYTES else None
        self.gpu = None  # its normalized copy on a CUDA device, once `gpu_bank` uploaded it

    def chunks(self):
        """(first row, normalized rows) over the whole bank."""
        if self.whole is not None:
            yield 0, self.whole
            return
        for a in range(0, self.n, BANK_CHUNK):
            yield a, l2_normalize(self.raw[a:a + BANK_CHUNK])

    def rows(self, pos: np.ndarray) -> np.ndarray:
        """Normalized rows at bank positions `pos` (any shape) → pos.shape + (d,)."""
        flat = np.asarray(pos).ravel()
        got = self.whole[flat] if self.whole is not None else l2_normalize(self.raw[flat])
        return got.reshape(*np.shape(pos), self.d)


GPU_SCORE_BYTES = 2 ** 31  # the (queries × bank) float32 similarity block one GPU product may hold
QUERY_BLOCK = 2048  # queries per FAISS call: enough for BLAS speed, small enough for a progress bar to move


CPU_SCORE_BYTES = 2 ** 27  # the (queries × chunk) float32 similarity block one CPU product may hold (torch backend)
CPU_BACKEND: dict[int, str] = {}  # dimension → "faiss" or "torch", measured once per process (`cpu_backend`); tests and benchmarks/knn_backend.py pin or clear it


PROBE = (256, 8192)  # queries × bank rows `cpu_backend` times each backend on
PROBE_MIN_RATIO = 20  # a search with less than this many times the probe's work is not worth timing: FAISS runs it


def cpu_backend(d: int, work: float | None = None) -> str:
    """The faster exact float32 top-k on this CPU for d-dimensional vectors: "faiss" (its blocked BLAS with a fused
    heap) or "torch" (a matrix product, then `torch.topk`), timed once per process and dimension on a PROBE block
    (0.3–0.9 s measured). faiss-cpu's wheels bundle their own OpenBLAS, which on CPUs newer than it knows runs a generic
    kernel: on the 2-core dev machine's Xeon (AVX-512, AMX) FAISS's search ran at a quarter of torch's MKL
    (docs/benchmarks/knn_backend.md), while on a CPU it knows its fused heap is a little ahead. Both give float32
    similarities that `certify_cutoffs` settles exactly, so the choice changes speed, never results. `work`: the
    search's multiply-adds; below PROBE_MIN_RATIO × the probe's, FAISS without timing."""
    if d in CPU_BACKEND:
        return CPU_BACKEND[d]
    if work is not None and work < PROBE_MIN_RATIO * PROBE[0] * PROBE[1] * d:
        return "faiss"
    import time

    import faiss

    rng = np.random.default_rng(0)
    q, b = (l2_normalize(rng.standard_normal((n, d), dtype=np.float32)) for n in PROBE)
    took = {}
    for name, run in (("faiss", lambda: faiss.knn(q, b, 32, metric=faiss.METRIC_INNER_PRODUCT)),
                      ("torch", lambda: _torch_topk(b, q, 32))):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        took[name] = best
    CPU_BACKEND[d] = min(took, key=took.get)
    log.info("exact top-k at %d-d on this CPU: %s (faiss %.0f ms, torch %.0f ms for %d × %d)", d,
             CPU_BACKEND[d], 1e3 * took["faiss"], 1e3 * took["torch"], *PROBE)
    return CPU_BACKEND[d]


def topk(bank: Bank, q: np.ndarray, k: int, desc: str = "knn: search") -> tuple[np.ndarray, np.ndarray]:
    """float32 exact inner-product top-k of normalized queries over the bank, a chunk of the bank at a time with
    the chunks merged, best first, equal similarities by lower bank position; progress per block of queries on
    stderr. On the CPU, FAISS's blocked BLAS with a fused top-k heap or torch's product + topk, whichever
    `cpu_backend` measured faster here; on a GPU, torch's (the `gpu_bank` seam)."""
    import faiss

    from embedsearch.store.faiss_index import use_blas_from

    use_blas_from(bank.d)
    k = int(min(k, bank.n))
    out_s, out_i = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    gpu = gpu_bank(bank)
    backend = "gpu" if gpu is not None else cpu_backend(bank.d, len(q) * bank.n * bank.d)
    with progress.bar(len(q), desc, unit="query") as bar:
        for a0 in range(0, len(q), QUERY_BLOCK):
            qb = q[a0:a0 + QUERY_BLOCK]
            best_s = best_i = None
            for a, b in bank.chunks() if gpu is None else [(0, gpu)]:
                kb = int(min(k, len(b)))
                if backend == "faiss":
                    s, i = faiss.knn(qb, b, kb, metric=faiss.METRIC_INNER_PRODUCT)
                else:
                    s, i = _torch_topk(b, qb, kb)
                i = i + a
                if best_s is not None:  # merge with the chunks before: similarity, then lower bank position
                    s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
                    o = np.lexsort((i, -s), axis=1)[:, :k]
                    s, i = np.take_along_axis(s, o, 1), np.take_along_axis(i, o, 1)
                best_s, best_i = s, i
            out_s[a0:a0 + len(qb)], out_i[a0:a0 + len(qb)] = best_s, best_i
            bar.update(len(qb))
    return out_s, out_i


def gpu_bank(bank: Bank):
    """The GPU seam: the normalized float32 bank on a CUDA device when torch sees one and it takes at most half
    of the device's free memory (a bank too large for host RAM as float32 is uploaded a chunk at a time); None
    (FAISS on the CPU) otherwise."""
    import torch

    if bank.gpu is not None:  # uploaded by an earlier search of this bank
        return bank.gpu
    if not torch.cuda.is_available() or bank.n * bank.d * 4 > torch.cuda.mem_get_info()[0] // 2:
        return None
    if bank.whole is not None:
        bank.gpu = torch.from_numpy(bank.whole).cuda()
    else:
        bank.gpu = torch.empty((bank.n, bank.d), dtype=torch.float32, device="cuda")
        for a, b in bank.chunks():
            bank.gpu[a:a + len(b)] = torch.from_numpy(b).cuda()
    return bank.gpu


def _torch_topk(bank, qb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 top-k of `qb` against a bank (a numpy array, or a torch tensor on a CUDA device) with torch: a block
    of queries at a time, so the similarity block stays bounded; full float32 products (TF32 and reduced-precision
    CPU products off), so the error bound `certify_cutoffs` relies on holds; ties ordered by lower bank position,
    as FAISS's are."""
    import torch

    bank_t = torch.from_numpy(bank) if isinstance(bank, np.ndarray) else bank
    cuda = bank_t.is_cuda
    prev = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    rows = max(1, (GPU_SCORE_BYTES if cuda else CPU_SCORE_BYTES) // (4 * len(bank_t)))
    try:
        with torch.no_grad():
            q = torch.from_numpy(np.ascontiguousarray(qb, np.float32)).to(bank_t.device)
            got = [torch.topk(q[a:a + rows] @ bank_t.T, k, dim=1) for a in range(0, len(q), rows)]
            s, i = torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev[0]
        torch.set_float32_matmul_precision(prev[1])
    s, i = s.cpu().numpy(), i.cpu().numpy().astype(np.int64)
    o = np.lexsort((i, -s), axis=1)
    return np.take_along_axis(s, o, 1), np.take_along_axis(i, o, 1)


def _self_positions(bank_ids, q_ids, n_q: int) -> np.ndarray:
    """The bank position of each query's own item (-1: not in the bank)."""
    if bank_ids is None or q_ids is None:
        return np.full(n_q, -1, np.int64)
    bank_ids, q_ids = np.asarray(bank_ids), np.asarray(q_ids)
    order = np.argsort(bank_ids, kind="stable")
    at = np.clip(np.searchsorted(bank_ids[order], q_ids), 0, max(len(order) - 1, 0))
    hit = len(order) > 0 and bank_ids[order][at] == q_ids
    return np.where(hit, order[at], -1)


def knn_neighbours(bank, q: np.ndarray, kmax: int, bank_ids=None, q_ids=None, ks=None):
    """Exact cosine top-kmax over the whole bank (an array or a `Bank`); drops a query's own id. (sims, bank
    positions), best first.

    FAISS's exact float32 k-NN finds a few more than kmax candidates; then the neighbour *set* at each cut-off in
    `ks` (default: kmax) is made exact (`certify_cutoffs`): float32 similarities are within EPS of the float64 ones,
    so only candidates within 2·EPS of a cut-off's similarity can be on the wrong side of it, and those are
    re-scored in float64. A row whose uncertain band reaches the end of its candidate list is searched again with a
    list 4× as long (`_widen`), until the band fits or the list is the whole bank. The result is the float64
    ranking's k-NN (ties to the lower bank position) whatever the BLAS, blocking or thread count; the work beyond
    the float32 search is proportional to the candidates near a cut-off. sims are float32 values (float64 where
    re-scored).
    """
    bank = bank if isinstance(bank, Bank) else Bank(bank)
    qq = l2_normalize(q)
    self_pos = _self_positions(bank_ids, q_ids, len(qq))
    ks = tuple(ks or (kmax,))
    K = int(min(candidate_count(kmax), bank.n - int((self_pos >= 0).any())))
    sims, idx = _candidates(bank, qq, self_pos, K)
    sims, idx, widen = certify_cutoffs(bank, qq, sims.astype(np.float64), idx, ks, self_pos)
    while len(widen):  # bands that reach the list's end: a longer list for those rows only
        K = min(4 * K, bank.n)
        ws, wi = _widen(bank, qq[widen], self_pos[widen], K)
        ws, wi, again = certify_cutoffs(bank, qq[widen], ws.astype(np.float64), wi, ks, self_pos[widen])
        sims[widen], idx[widen] = ws[:, :sims.shape[1]], wi[:, :idx.shape[1]]
        widen = widen[again]
    return sims[:, :kmax], idx[:, :kmax]


def _candidates(bank: Bank, qq: np.ndarray, self_pos: np.ndarray, K: int, desc: str = "knn: search"):
    """float32 top-K per query, its own item removed (rows without it lose their last column instead)."""
    drop = int((self_pos >= 0).any())
    sims, idx = topk(bank, qq, min(K + drop, bank.n), desc)
    if drop:
        own = idx == self_pos[:, None]
        own[~own.any(axis=1), -1] = True
        sims = sims[~own].reshape(len(qq), -1)
        idx = idx[~own].reshape(len(qq), -1)
    return sims, idx


def _widen(bank, qq, self_pos, K):
    return _candidates(bank, qq, self_pos, K, desc=f"knn: {len(qq)} rows with near-ties at a cut-off, {K} candidates")


KNN_MARGIN = 8  # candidates beyond kmax (plus kmax/8), so an uncertain band at kmax rarely reaches the list's end


def candidate_count(kmax: int) -> int:
    """How many float32 candidates a top-kmax search keeps for certification."""
    return kmax + KNN_MARGIN + kmax // 8


def float32_dot_error(d: int) -> float:
    """Bound on |float32 dot − exact dot| for two unit vectors of dimension d, any summation order, FMA or not
    (Higham's γ_d = d·u/(1 − d·u) times Σ|q_j x_j| ≤ ‖q‖·‖x‖, which is ≤ 1 + 1e-5 for float32-normalized vectors)."""
    u = 2.0 ** -24
    return (d * u / (1 - d * u)) * (1 + 1e-5)


def certify_cutoffs(bank, q, sims, idx, ks, self_pos=None, size: int | None = None):
    """Make the top-k set exact (float64) at each cut-off k in `ks` of float32 candidate lists sorted best first.
    `size`: how many bank items the candidates were drawn from (default: all of them; few-shot draws them from a
    sample, `fewshot.py`).

    With |float32 − exact| ≤ EPS, a candidate more than 2·EPS above the similarity just below cut-off k is surely
    in the top k, one more than 2·EPS below the k-th is surely out; only the band between (none when the gap at k
    is larger than 2·EPS) is uncertain. Each row's bands (merged where they touch) are re-scored in float64 and
    sorted in place (float64 ties: lower bank position first), which settles every cut-off at once and keeps the
    certain ones. A band that reaches the end of a list that is not the whole bank (items outside could belong),
    or a cut-off beyond the list, cannot be settled here: those rows are returned in `widen` (positions into the
    rows given). Returns (sims, idx, widen); `sims` (float64) and `idx` are changed in place."""
    bank = bank if isinstance(bank, Bank) else Bank(bank)
    eps2 = 2 * float32_dot_error(bank.d)
    n, K = idx.shape
    no_widen = np.zeros(0, np.int64)
    if n == 0 or K == 0:
        return sims, idx, no_widen
    own = (self_pos >= 0) if self_pos is not None else np.zeros(n, bool)
    complete = K >= (bank.n if size is None else size) - own  # per row: every item (its own aside) is a candidate
    mark = np.zeros((n, K), bool)
    beyond = np.zeros(n, bool)
    for k in sorted(set(ks)):
        if k >= K:  # a cut-off at or past the list's end: items outside it could belong
            beyond[:] = True
            continue
        unsure = np.flatnonzero(sims[:, k - 1] - sims[:, k] <= eps2)
        if not len(unsure):
            continue
        s = sims[unsure]
        lo = (s > s[:, [k]] + eps2).sum(axis=1)            # first position that might fall below the cut-off
        hi = (s >= s[:, [k - 1]] - eps2).sum(axis=1)        # one past the last that might rise above it
        pos = np.arange(K)
        mark[unsure] |= (pos >= lo[:, None]) & (pos < hi[:, None])
    widen = (mark[:, -1] | beyond) & ~complete
    rows = np.flatnonzero(mark.any(axis=1) & ~widen)
    if len(rows):
        r, c = np.nonzero(mark[rows])
        r = rows[r]
        exact = np.empty(len(r))
        for a in range(0, len(r), 16384):  # products of float32 are exact in float64; the sum is float64
            sl = slice(a, a + 16384)
            exact[sl] = np.einsum("pd,pd->p", q[r[sl]], bank.rows(idx[r[sl], c[sl]]), dtype=np.float64)
        # merged bands: runs of marked positions (a new run where the previous position is unmarked)
        start = mark[rows].copy()
        start[:, 1:] &= ~mark[rows][:, :-1]
        run = np.cumsum(start.ravel()).reshape(start.shape)[np.nonzero(mark[rows])]
        items = idx[r, c]
        o = np.lexsort((items, -exact, run))  # within each run: float64 similarity, then lower bank position
        sims[r, c], idx[r, c] = exact[o], items[o]
    return sims, idx, np.flatnonzero(widen)


class ExactSims:
    """float64 cosine similarities of chosen query rows to their neighbours `idx`, computed once per row (for
    re-voting near-tied rows, `knn_scores`)."""

    def __init__(self, bank, q: np.ndarray, idx: np.ndarray):
        self.bank = bank if isinstance(bank, Bank) else Bank(bank)
        self.q, self.idx = q, idx
        self.eps = float32_dot_error(self.bank.d)  # how far the float32 similarities can be off
        self.sims = np.zeros(idx.shape)
        self.done = np.zeros(len(idx), bool)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        todo = rows[~self.done[rows]]
        step = max(1, 2 ** 22 // max(1, self.idx.shape[1] * self.bank.d))  # ~16 MB of gathered neighbours at a time
        for a in range(0, len(todo), step):
            r = todo[a:a + step]
            b, q = self.bank.rows(self.idx[r]), l2_normalize(self.q[r])
            self.sims[r] = np.einsum("rkd,rd->rk", b, q, dtype=np.float64)
        self.done[rows] = True
        return self.sims[rows]


# -------------------------------------------------------------------------------------------- threshold joins

TILE_ROWS = 2048  # query rows per tile
TILE_COLS = 32768  # bank rows per tile: a 2048 × 32768 float32 tile of similarities is 256 MiB


def similar_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float,
                  desc: str = "similar pairs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair with cosine ≥ threshold, as (positions in a, positions in b, similarities).

    b None: pairs within a, each once (i < j), only the upper triangle of tiles computed. Otherwise all (i, j) from
    a × b. Exact float32: one matrix product per tile, then a threshold."""
    an = l2_normalize(a)
    bn = an if b is None else l2_normalize(b)
    rows, cols, sims = [], [], []
    with progress.bar(len(an), desc, unit="item") as bar:
        for r0 in range(0, len(an), TILE_ROWS):
            qa = an[r0:r0 + TILE_ROWS]
            start = r0 if b is None else 0  # the self join skips tiles below the diagonal
            for c0 in range(start, len(bn), TILE_COLS):
                s = qa @ bn[c0:c0 + TILE_COLS].T
                i, j = np.nonzero(s >= threshold)
                if b is None:
                    keep = (j + c0) > (i + r0)
                    i, j = i[keep], j[keep]
                rows.append(i + r0)
                cols.append(j + c0)
                sims.append(s[i, j])
            bar.update(len(qa))
    def cat(xs, t):
        return np.concatenate(xs).astype(t) if xs else np.zeros(0, t)

    return cat(rows, np.int64), cat(cols, np.int64), cat(sims, np.float32)


def nearest_in(q: np.ndarray, bank: np.ndarray, threshold: float, desc: str = "nearest above a threshold"
               ) -> tuple[np.ndarray, ...]:
    """For each row of q, its most similar row of bank if that similarity ≥ threshold: (q positions, bank
    positions, similarities), one entry per q row that has one."""
    i, j, s = similar_pairs(q, bank, threshold, desc=desc)
    if not len(i):
        return i, j, s
    o = np.lexsort((j, -s, i))  # per query: highest similarity first, then lower bank position
    i, j, s = i[o], j[o], s[o]
    first = np.r_[True, i[1:] != i[:-1]]
    return i[first], j[first], s[first]
