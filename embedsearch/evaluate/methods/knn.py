"""Weighted k-nearest-neighbour vote (DINOv2's protocol) over the whole train bank, exact and certified.

The neighbour search is FAISS's exact k-NN in float32; where float32 error could change the neighbour set at a
cut-off, or the vote's top classes, the near-tied candidates are settled in float64 (`certify_cutoffs`,
`ExactSims`), so the votes equal a float64 computation's whatever the BLAS, blocking or thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate.methods.base import Fitted, Method, register

KNN_KS = (10, 20, 100, 200)
KNN_T = 0.07


def knn_neighbours(bank: np.ndarray, q: np.ndarray, kmax: int, bank_ids=None, q_ids=None, ks=None):
    """Exact cosine top-kmax over the whole bank; drops a query's own id. (sims, bank positions), best first.

    FAISS's exact k-NN (blocked float32 BLAS with a fused top-k heap, BLAS from 20 queries on, see index.search)
    finds a few more than kmax candidates; then the neighbour *set* at each cut-off in `ks` (default: kmax) is made
    exact: float32 similarities are within EPS of the float64 ones, so where two candidates on either side of a
    cut-off are closer than 2·EPS the run of near-ties around it is re-ranked in float64 (`certify_cutoffs`). The
    result is the float64 ranking's k-NN, whatever the BLAS, blocking or thread count. sims are float32 values
    (float64 where re-ranked).
    """
    import faiss

    from embedsearch.store.faiss_index import use_blas_from

    b, qq = l2_normalize(bank), l2_normalize(q)
    self_pos = np.full(len(qq), -1, np.int64)
    if bank_ids is not None and q_ids is not None:
        order = np.argsort(bank_ids, kind="stable")
        at = np.clip(np.searchsorted(np.asarray(bank_ids)[order], q_ids), 0, max(len(order) - 1, 0))
        hit = len(order) > 0 and np.asarray(bank_ids)[order][at] == np.asarray(q_ids)
        self_pos = np.where(hit, order[at], -1)
    drop = int((self_pos >= 0).any())
    k = min(kmax + drop + KNN_MARGIN + kmax // 8, len(b))
    use_blas_from(b.shape[1])
    sims, idx = faiss.knn(qq, b, k, metric=faiss.METRIC_INNER_PRODUCT)
    if drop:  # remove each query's own position; rows without it lose their last column instead
        own = idx == self_pos[:, None]
        own[~own.any(axis=1), -1] = True
        sims = sims[~own].reshape(len(qq), k - 1)
        idx = idx[~own].reshape(len(qq), k - 1)
    # per row: every bank item is a candidate (its own item aside), so nothing outside the list can enter
    complete = idx.shape[1] >= len(b) - (self_pos >= 0)
    sims, idx = certify_cutoffs(b, qq, sims.astype(np.float64), idx, ks or (kmax,), complete, self_pos)
    return sims[:, :kmax], idx[:, :kmax]


def _exact_topk64(b, q, k, self_pos=None, chunk=8192):
    """float64 top-k of q against the whole bank, streamed over bank chunks; ties: lower bank position first."""
    q64 = q.astype(np.float64)
    best_s = np.full((len(q), 0), -np.inf)
    best_i = np.zeros((len(q), 0), np.int64)
    for s0 in range(0, len(b), chunk):
        s64 = q64 @ b[s0:s0 + chunk].astype(np.float64).T
        if self_pos is not None:
            own = (self_pos >= s0) & (self_pos < s0 + s64.shape[1])
            s64[np.flatnonzero(own), self_pos[own] - s0] = -np.inf
        cand_s = np.concatenate([best_s, s64], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(s0, s0 + s64.shape[1]), s64.shape)], axis=1)
        if cand_s.shape[1] > k:  # keep everything tied with the k-th value, so the tie-break below is exact
            kth = -np.partition(-cand_s, k - 1, axis=1)[:, [k - 1]]
            keep = cand_s >= kth
            width = int(keep.sum(axis=1).max())
            pos = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            cand_s, cand_i = np.take_along_axis(cand_s, pos, 1), np.take_along_axis(cand_i, pos, 1)
            cand_s[~np.take_along_axis(keep, pos, 1)] = -np.inf
        o = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]  # higher first, then the lower bank position
        best_s, best_i = np.take_along_axis(cand_s, o, 1), np.take_along_axis(cand_i, o, 1)
    return best_s, best_i


KNN_MARGIN = 8  # candidates beyond kmax (plus kmax/8), so a run of near-ties at kmax rarely reaches the list's end


def float32_dot_error(d: int) -> float:
    """Bound on |float32 dot − exact dot| for two unit vectors of dimension d, any summation order, FMA or not
    (Higham's γ_d = d·u/(1 − d·u) times Σ|q_j x_j| ≤ ‖q‖·‖x‖, which is ≤ 1 + 1e-5 for float32-normalized vectors)."""
    u = 2.0 ** -24
    return (d * u / (1 - d * u)) * (1 + 1e-5)


def certify_cutoffs(b, q, sims, idx, ks, complete, self_pos=None):
    """Make the top-k set exact (float64) at each cut-off k in `ks` of float32 candidate lists sorted best first.

    The float32 order is certain between candidates more than 2·EPS apart. At a cut-off whose gap is smaller, the
    run of candidates linked by gaps ≤ 2·EPS around it is re-scored in float64 and the row re-sorted; a run that
    reaches the end of the list (items outside it could belong) makes the row fall back to a float64 search over the
    whole bank, as does a cut-off at the list's end on a row whose list is not the whole bank. Ties in float64 keep
    the lower bank position first. `sims` (float64) and `idx` are changed in place."""
    eps2 = 2 * float32_dot_error(b.shape[1])
    n, K = idx.shape
    if n == 0 or K == 0:
        return sims, idx
    small = (sims[:, :-1] - sims[:, 1:]) <= eps2             # gap between positions j and j+1 is uncertain
    comp = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(~small, axis=1)], axis=1)  # run id per position
    mark = np.zeros((n, K), bool)
    for k in sorted({k for k in ks if 0 < k < K}):
        amb = small[:, k - 1]
        mark |= amb[:, None] & (comp == comp[:, [k - 1]])
    # a cut-off at or past the list's end cannot be checked against the items outside it
    full = (mark[:, -1] | any(k >= K for k in ks)) & ~np.broadcast_to(complete, (n,))
    rows = np.flatnonzero(mark.any(axis=1) & ~full)
    if len(rows):
        r, c = np.nonzero(mark[rows])
        r = rows[r]
        exact = np.empty(len(r))
        for s in range(0, len(r), 16384):  # products of float32 are exact in float64; the sum is float64
            sl = slice(s, s + 16384)
            exact[sl] = np.einsum("pd,pd->p", q[r[sl]], b[idx[r[sl], c[sl]]], dtype=np.float64)
        # each run keeps its positions (it is isolated by gaps > 2·EPS); sort its items within them
        items = idx[r, c]
        o = np.lexsort((items, -exact, comp[r, c], r))
        sims[r, c], idx[r, c] = exact[o], items[o]
    full = np.flatnonzero(full)
    if len(full):
        sims[full], idx[full] = _exact_topk64(b, q[full], K, None if self_pos is None else self_pos[full])
    return sims, idx


class ExactSims:
    """float64 cosine similarities of chosen query rows to their neighbours `idx`, computed once per row (for
    re-voting near-tied rows, `knn_scores`)."""

    def __init__(self, bank: np.ndarray, q: np.ndarray, idx: np.ndarray):
        self.bank, self.q, self.idx = bank, q, idx
        self.eps = float32_dot_error(bank.shape[1])  # how far the float32 similarities can be off
        self.sims = np.zeros(idx.shape)
        self.done = np.zeros(len(idx), bool)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        for r in rows[~self.done[rows]]:  # one float64 matrix-vector product per row
            b, q = l2_normalize(self.bank[self.idx[r]]), l2_normalize(self.q[r:r + 1])[0]
            self.sims[r] = b.astype(np.float64) @ q.astype(np.float64)
        self.done[rows] = True
        return self.sims[rows]


def knn_scores(sims: np.ndarray, labels: np.ndarray, k: int, n_classes: int, T: float | None = KNN_T,
               exact: ExactSims | None = None, ranks=(1, 3, 5)) -> np.ndarray:
    """DINOv2 weighted vote: softmax(sim / T) over the k neighbours, summed per class; T=None: majority vote.

    With `exact`, rows where float32 similarity errors could change which classes are in the top r (r in `ranks`:
    the r-th and (r+1)-th class scores closer than the factor exp(±2·EPS/T) each score can move by) are voted again
    with float64 similarities, so top-1/3/5 equal a float64 computation's."""
    def vote(s, lab):
        s = s[:, :k].astype(np.float64)
        if T is None:
            w = np.ones_like(s)
        else:
            w = np.exp((s - s.max(axis=1, keepdims=True)) / T)
            w /= w.sum(axis=1, keepdims=True)
        out = np.zeros((len(s), n_classes))
        np.add.at(out, (np.repeat(np.arange(len(s)), lab.shape[1]), lab.ravel()), w.ravel())
        return out

    lab = labels[:, :k]
    out = vote(sims, lab)
    cut = [r for r in ranks if r < n_classes]
    if exact is not None and T is not None and len(out) and cut:
        top = -np.sort(-out, axis=1)[:, :max(cut) + 1]
        a, b = top[:, [r - 1 for r in cut]], top[:, cut]
        near = ((a - b) <= (a + b) * np.expm1(2 * exact.eps / T)) & (b > 0)
        rows = np.flatnonzero(near.any(axis=1))
        if len(rows):
            out[rows] = vote(exact(rows), lab[rows])
    return out


class _Neighbours:
    """The k-NN of one query set against the bank, computed once and shared by the variants of one fit."""

    def __init__(self, train, ks, T):
        self.train, self.ks, self.T, self._for, self._value = train, ks, T, (None, None), None

    def __call__(self, x, ids):
        # the cache holds the query arrays themselves, so `is` cannot match a new array that reuses a freed id()
        if self._for[0] is not x or self._for[1] is not ids:
            t = self.train
            sims, idx = knn_neighbours(t.x, x, max(self.ks), t.ids, ids, ks=self.ks)
            self._for, self._value = (x, ids), (sims, idx, ExactSims(t.x, x, idx))
        return self._value


@dataclass
class KnnFitted(Fitted):
    k: int = 20
    T: float | None = KNN_T
    neighbours: _Neighbours = None

    def scores(self, x, ids=None):
        sims, idx, exact = self.neighbours(x, ids)
        labels = self.neighbours.train.y[idx]
        return knn_scores(sims, labels, self.k, self.neighbours.train.n_classes, self.T, exact)

    def tally(self, x, y, ids=None):
        """Items correct at every k of the sweep, weighted and majority: shown next to the result, chosen from
        nothing."""
        sims, idx, exact = self.neighbours(x, ids)
        labels, C = self.neighbours.train.y[idx], self.neighbours.train.n_classes
        ks = self.neighbours.ks
        weighted = {str(k): int((knn_scores(sims, labels, k, C, self.neighbours.T, exact, ranks=(1,)).argmax(1)
                                 == y).sum()) for k in ks}
        majority = {str(k): int((knn_scores(sims, labels, k, C, None).argmax(1) == y).sum()) for k in ks}
        return {"k_sweep_top1": weighted, "k_sweep_majority_top1": majority}


@register
class Knn(Method):
    name = "knn"

    def fit(self, train, ctx):
        ks = tuple(k for k in ctx.knn_ks if k <= len(train.y)) or (len(train.y),)
        head = 20 if 20 in ks else ks[0]
        nb = _Neighbours(train, ks, ctx.knn_t)
        common = {"features": "L2-normalized", "k_sweep_T": ctx.knn_t,
                  "search": "exact, whole train bank (float32 search; neighbour sets at each k and near-tied "
                            "votes settled in float64)", "k_sweep": list(ks), "self_match": "dropped"}
        return [KnnFitted(self.name, f"weighted k={head}, T={ctx.knn_t}", {"k": head, "T": ctx.knn_t, **common}, k=head,
                          T=ctx.knn_t, neighbours=nb),
                KnnFitted(self.name, f"majority k={head}", {"k": head, "vote": "majority", **common}, k=head,
                          T=None, neighbours=nb)]
