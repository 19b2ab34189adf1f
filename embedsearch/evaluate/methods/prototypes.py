"""Nearest class prototype: each class is the normalized mean of its normalized train vectors; score = cosine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate.methods.base import Fitted, Method, register


def prototypes(x: np.ndarray, y: np.ndarray, n_classes: int, chunk: int = 8192,
               normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """prototype_c = normalize(mean of normalize(e_i) over train items of class c); (C, d) and a has-prototype mask.

    One pass over the rows in class order, `chunk` rows at a time (normalized in float32, each class's run summed
    in float64): memory bandwidth, not a scatter per element, whatever the dtype stored. `normalized`: the rows
    are already `l2_normalize`d (as a `knn.Bank` holds them), so the same sums are taken without that step."""
    y = np.asarray(y, np.int64)
    sums = np.zeros((n_classes, x.shape[1]), np.float64)
    order = np.argsort(y, kind="stable")
    for a in range(0, len(order), chunk):
        pos = order[a:a + chunk]
        yc, xn = y[pos], (x[pos] if normalized else l2_normalize(x[pos]))
        edges = np.r_[np.flatnonzero(np.r_[True, yc[1:] != yc[:-1]]), len(yc)]
        for s, e in zip(edges[:-1], edges[1:], strict=True):  # one run per class in this chunk
            sums[yc[s]] += xn[s:e].sum(axis=0, dtype=np.float64)
    counts = np.bincount(y, minlength=n_classes)
    protos = l2_normalize(sums / np.maximum(counts, 1)[:, None])
    return protos, counts > 0


def prototype_scores(protos: np.ndarray, has: np.ndarray, q: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Cosine of each query to each prototype; `normalized`: `q` is already `l2_normalize`d."""
    s = (q if normalized else l2_normalize(q)) @ protos.T
    s[:, ~has] = -np.inf  # a class with no train item cannot be predicted
    return s


@dataclass
class PrototypesFitted(Fitted):
    protos: np.ndarray = None
    has: np.ndarray = None

    def scores(self, x, ids=None):
        return prototype_scores(self.protos, self.has, x)

    def tensors(self):
        return {"prototypes": self.protos.astype(np.float32), "has": self.has.astype(np.uint8)}


@register
class Prototypes(Method):
    name = "prototypes"

    def estimate(self, shape, rates, ctx):
        # two passes over the stored train rows (read, normalize) and a (m × d)·(d × C) product
        n, m, d, C = shape.n, shape.m, shape.d, shape.C
        return 2 * n * d * (shape.itemsize + 4) / rates.bandwidth + 2 * m * d * C / rates.flops

    def fit(self, train, ctx):
        protos, has = prototypes(train.x, train.y, train.n_classes)
        return [PrototypesFitted(self.name, "nearest class prototype (cosine)",
                                 {"prototype": "normalize(mean of L2-normalized train vectors)", "metric": "cosine"},
                                 protos=protos, has=has)]

    def load(self, t, meta):
        return PrototypesFitted(self.name, meta.get("variant", ""), meta.get("params", {}),
                                protos=t["prototypes"], has=t["has"].astype(bool))

    def shapes(self, t, dim, n_classes):
        return {"prototypes": (n_classes, dim), "has": (n_classes,)}
