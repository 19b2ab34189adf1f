"""Vector helpers every stage shares: row-wise L2 normalisation (cosine = inner product of the results) and dropping
a query's own id from its neighbours."""

from __future__ import annotations

import numpy as np

NORM_EPS = 1e-12  # a zero row stays zero instead of becoming NaN


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32, contiguous (what FAISS takes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), NORM_EPS)


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id (`self_ids[r]`; -1 for none) from its result row and keep k columns, padding with
    id -1 and score -inf: (ids, scores)."""
    out_i = np.full((len(ids), k), -1, np.int64)
    out_s = np.full((len(ids), k), -np.inf, np.float32)
    for r in range(len(ids)):
        keep = ids[r] != self_ids[r]
        row_i, row_s = ids[r][keep][:k], scores[r][keep][:k]
        out_i[r, :len(row_i)], out_s[r, :len(row_s)] = row_i, row_s
    return out_i, out_s
