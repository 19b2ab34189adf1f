"""Vector helpers every stage shares: row-wise L2 normalisation (cosine = inner product of the results) and dropping
a query's own id from its neighbours."""

from __future__ import annotations

import numpy as np

NORM_EPS = 1e-12  # a zero row stays zero instead of becoming NaN


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32, contiguous (what FAISS takes).

    Each row is first divided by its largest |component|, so the norm is taken of values in [-1, 1] with at least
    one ±1: it can neither overflow (components ~1e30: the squares pass float32's 3.4e38) nor underflow (~1e-44:
    the squares are 0). Either would make a valid vector a zero vector that scores 0 against everything."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.zeros((len(x), 1), np.float32)
    y = x / np.where(peak > 0, peak, np.float32(1))
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), NORM_EPS)
    return y


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
