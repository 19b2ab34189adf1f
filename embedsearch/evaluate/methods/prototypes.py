"""Nearest class prototype: each class is the normalized mean of its normalized train vectors; score = cosine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedsearch.core.vectors import BLOCK_BYTES, SQ_SAFE, l2_normalize, to_float32
from embedsearch.evaluate.methods.base import Fitted, Method, register

FLUSH_ROWS = 8192  # rows summed in float32 before the partial sums are added into the float64 totals


def prototypes(x: np.ndarray, y: np.ndarray, n_classes: int, normalized: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """prototype_c = normalize(mean of normalize(e_i) over train items of class c); (C, d) and a has-prototype mask.

    One pass over the rows in their stored order, a cache-sized block at a time: each block is normalized
    (float16 converted on the way; a block with a row float32 cannot square-sum accurately goes through
    `l2_normalize`'s careful path) and added to its rows' class sums (`index_add_`), in float32 for
    at most FLUSH_ROWS rows, then into float64 totals, so the sums keep float64's accuracy at float32's speed.
    There is no gather: 5× the class-sorted pass this replaced (docs/benchmarks/read.md). `normalized`: the rows are
    already `l2_normalize`d (as a `knn.Bank` holds them), so the same sums are taken without that step."""
    import torch

    y = np.asarray(y, np.int64)
    d = x.shape[1]
    rows = max(1, BLOCK_BYTES // (4 * max(d, 1)))
    labels = torch.from_numpy(y)
    totals = torch.zeros((n_classes, d), dtype=torch.float64)
    partial = torch.zeros((n_classes, d), dtype=torch.float32)
    buf = np.empty((rows, d), np.float32)
    lo, hi = (float(np.sqrt(v)) for v in SQ_SAFE)
    for i, a in enumerate(range(0, len(x), rows)):
        block = x[a:a + rows]
        if block.dtype != np.float32 or not block.flags.c_contiguous or not block.flags.writeable:
            block = to_float32(block, out=buf[:len(block)])
        t = torch.from_numpy(block)
        if not normalized:
            norm = torch.linalg.vector_norm(t, dim=1, keepdim=True)
            if bool(((norm > lo) & (norm < hi)).all()):
                t = torch.div(t, norm, out=torch.from_numpy(buf[:len(block)]))
            else:  # a row float32 cannot square-sum accurately: l2_normalize's careful path for this block
                t = torch.from_numpy(l2_normalize(block, out=buf[:len(block)]))
        partial.index_add_(0, labels[a:a + len(block)], t)
        if (i + 1) % max(1, FLUSH_ROWS // rows) == 0:
            totals += partial
            partial.zero_()
    totals += partial
    counts = np.bincount(y, minlength=n_classes)
    protos = l2_normalize(totals.numpy() / np.maximum(counts, 1)[:, None])
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
    order = 10

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
