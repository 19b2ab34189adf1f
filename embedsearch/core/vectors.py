"""Vector helpers every stage shares: row-wise L2 normalisation (cosine = inner product of the results) and dropping
a query's own id from its neighbours."""

from __future__ import annotations

import numpy as np

NORM_EPS = 1e-12  # a zero row stays zero instead of becoming NaN


BLOCK_BYTES = 2 ** 20  # float32 rows converted and normalized at a time: cache-sized (4× faster than 32 MB blocks)


SQ_SAFE = (np.float32(1e-30), np.float32(1e30))  # squared norms float32 holds to full precision


def to_float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A float32 copy of `x` (into `out` when given). float16 goes through torch's vectorized conversion: numpy's
    is about 6× slower (0.39 s against 0.07 s for 60,000 × 3,072 on the 2-core dev machine)."""
    out = np.empty(x.shape, np.float32) if out is None else out
    if x.dtype == np.float16 and x.size:
        import warnings

        import torch

        with warnings.catch_warnings():  # a read-only source (a Parquet buffer) is only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            src = torch.from_numpy(np.ascontiguousarray(x))
        torch.from_numpy(out).copy_(src)
    else:
        out[...] = x
    return out


def l2_normalize(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise L2 normalisation in float32, contiguous (what FAISS takes); float16 input is converted a block of
    rows at a time, straight into the result (`out`, when given), the only full-size array.

    A row whose squared norm float32 cannot hold accurately (components above ~1e15 would overflow it, below ~1e-15
    underflow it) is first divided by its largest |component|, so the norm is taken of values in [-1, 1] with at
    least one ±1: either failure would make a valid vector a zero vector that scores 0 against everything. Other
    rows take three passes in cache: convert, square-sum, divide."""
    x = np.asarray(x)
    y = np.empty(x.shape, np.float32) if out is None else out
    rows = max(1, BLOCK_BYTES // (4 * max(x.shape[1], 1)))
    for a in range(0, len(x), rows):
        b = to_float32(x[a:a + rows], out=y[a:a + rows])
        if not b.size:
            continue
        sq = np.einsum("ij,ij->i", b, b)
        bad = ~((sq > SQ_SAFE[0]) & (sq < SQ_SAFE[1]))  # zero, nan, underflowed or overflowed
        norm = np.sqrt(sq, out=sq)
        norm[bad] = 1
        b /= norm[:, None]
        if bad.any():
            r = b[bad]
            peak = np.abs(r).max(axis=1, keepdims=True)
            r /= np.where(peak > 0, peak, np.float32(1))
            r /= np.maximum(np.sqrt(np.einsum("ij,ij->i", r, r))[:, None], NORM_EPS)
            b[bad] = r
    return y


def column_stats(x: np.ndarray, rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation in float64, a block of rows at a time (no float64 copy of x)."""
    n, d = x.shape
    if n == 0:
        return np.zeros(d), np.zeros(d)
    mean = np.zeros(d)
    for a in range(0, n, rows):
        mean += to_float32(x[a:a + rows]).sum(axis=0, dtype=np.float64)
    mean /= n
    var = np.zeros(d)
    for a in range(0, n, rows):
        c = to_float32(x[a:a + rows]) - mean.astype(np.float32)
        var += np.einsum("ij,ij->j", c, c, dtype=np.float64)
    return mean, np.sqrt(var / n)


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x − mean) / std per column as float32, a block at a time; (Xs, mean, scale) with sklearn's StandardScaler
    convention (a constant column keeps scale 1)."""
    mean, std = column_stats(x)
    scale = np.where(std > 0, std, 1.0)
    out = np.empty(x.shape, np.float32)
    for a in range(0, len(x), 8192):
        out[a:a + 8192] = (to_float32(x[a:a + 8192]) - mean) / scale
    return out, mean, scale


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
