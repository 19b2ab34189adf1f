"""Weighted k-nearest-neighbour vote (DINOv2's protocol) over the whole train bank, exact and certified.

The neighbour search is query/exact.py's (`knn_neighbours`: exact float32 search, the neighbour set at each
cut-off settled in float64); here the votes, where rows whose top classes float32 error could swap are voted
again with float64 similarities (`ExactSims`), so the votes equal a float64 computation's whatever the BLAS,
blocking or thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsearch.evaluate.methods.base import Fitted, Method, register
from embedsearch.query.exact import Bank, ExactSims, knn_neighbours

KNN_KS = (10, 20, 100, 200)
KNN_T = 0.07


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
        self.bank = Bank(train.x)  # normalized once for all blocks of queries

    def __call__(self, x, ids):
        # the cache holds the query arrays themselves, so `is` cannot match a new array that reuses a freed id()
        if self._for[0] is not x or self._for[1] is not ids:
            t = self.train
            sims, idx = knn_neighbours(self.bank, x, max(self.ks), t.ids, ids, ks=self.ks)
            self._for, self._value = (x, ids), (sims, idx, ExactSims(self.bank, x, idx))
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
    order = 20

    def estimate(self, shape, rates, ctx):
        # the (m × d)·(d × n) similarity product; certification and votes measured at ~0.9× more
        # (docs/benchmarks/knn_neardup.md)
        return 1.9 * 2 * shape.n * shape.m * shape.d / rates.flops

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
