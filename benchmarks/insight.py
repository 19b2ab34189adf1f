"""Dataset insight at scale, in one run: near-duplicate pairs against a plain numpy blocked matrix product doing the
same thresholding, and label-issue scoring on 50,000 × 384.

Data: clustered synthetic vectors (1,000 centres, isotropic noise) with 1 % of the rows replaced by noisy copies of
other rows (the planted near-duplicates). Both duplicate finders return every pair with cosine ≥ 0.95 among
L2-normalized float32 vectors, and the run checks they return the same pairs.

- embedsearch: `insight.similar_pairs`, tiles of 2,048 × 32,768, the self-join computing only the tiles on and above
  the diagonal.
- numpy: the straightforward blocked version, blocks of 2,048 query rows against the whole bank, `np.nonzero` on
  each block, all pairs (i, j) kept with i < j.

At 1,000,000 vectors the full self-join is about 7.7·10^14 floating-point operations (an hour or two on this CPU for
either method), so that row times the first 8,192 rows against all 1,000,000 (the rows' share of the full join),
both ways, and states the full join's time extrapolated from it. Peak memory is tracemalloc's peak over the call
(numpy's arrays are traced). Label issues: 50,000 × 384 vectors, 20 classes, 5 % of the labels flipped (seeded);
out-of-fold kNN, and kNN + linear probe; recall of the flipped labels in the top-N. The reading:
docs/benchmarks/insight.md.

    python -m benchmarks insight [--n-small 100000] [--n-large 1000000] [--rows-large 8192] [--n-labels 50000]
"""

from __future__ import annotations

import json
import os
import platform
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np

from benchmarks._harness import args_from_command

THRESHOLD = 0.95
QUICK = {"n_small": 5000, "n_large": 20_000, "rows_large": 1024, "n_labels": 2000, "dim": 64}


def data(n: int, d: int, seed: int = 0, classes: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = np.empty((n, d), np.float32)
    for a in range(0, n, 65536):
        b = slice(a, a + 65536)
        x[b] = centres[y[b]] + 1.5 * rng.standard_normal((len(y[b]), d), np.float32)
    dup = rng.choice(n, n // 100, replace=False)
    src = rng.choice(n, n // 100, replace=False)
    x[dup] = x[src] + 0.05 * rng.standard_normal((len(dup), d), np.float32)
    y[dup] = y[src]
    return x, y


def numpy_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float, rows: int = 2048):
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = an if b is None else b / np.linalg.norm(b, axis=1, keepdims=True)
    out_i, out_j = [], []
    for r0 in range(0, len(an), rows):
        s = an[r0:r0 + rows] @ bn.T
        i, j = np.nonzero(s >= threshold)
        if b is None:
            keep = j > i + r0
            i, j = i[keep], j[keep]
        out_i.append(i + r0)
        out_j.append(j)
    return np.concatenate(out_i), np.concatenate(out_j)


def traced(fn):
    """(fn(), wall seconds, tracemalloc's peak in GiB over the call)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, secs, peak / 2**30


def add_arguments(ap) -> None:
    ap.add_argument("--n-small", type=int, default=100_000)
    ap.add_argument("--n-large", type=int, default=1_000_000)
    ap.add_argument("--rows-large", type=int, default=8192)
    ap.add_argument("--n-labels", type=int, default=50_000)
    ap.add_argument("--label-classes", type=int, default=20)
    ap.add_argument("--dim", type=int, default=384)


def run(args) -> dict:
    from embedsearch.core import progress
    from embedsearch.evaluate import insight as I
    from embedsearch.evaluate.methods import measure_rates

    progress.ENABLED = False
    rates = measure_rates()
    rows = {}

    x, _ = data(args.n_small, args.dim)
    (ei, ej, _), t_es, m_es = traced(lambda: I.similar_pairs(x, None, THRESHOLD))
    (ni, nj), t_np, m_np = traced(lambda: numpy_pairs(x, None, THRESHOLD))
    same = set(zip(ei.tolist(), ej.tolist(), strict=True)) == set(zip(ni.tolist(), nj.tolist(), strict=True))
    rows["small"] = {"n": args.n_small, "pairs": len(ei), "same_pairs": same, "embedsearch_s": round(t_es, 1),
                     "numpy_s": round(t_np, 1), "speedup": round(t_np / t_es, 2),
                     "embedsearch_peak_gib": round(m_es, 2), "numpy_peak_gib": round(m_np, 2),
                     "gemm_fraction": round(args.n_small ** 2 * args.dim / t_es / rates.flops, 2)}
    x = None  # freed before the next row

    big, _ = data(args.n_large, args.dim, seed=1)
    (ei, ej, _), t_es, m_es = traced(lambda: I.similar_pairs(big[:args.rows_large], big, THRESHOLD))
    (ni, nj), t_np, m_np = traced(lambda: numpy_pairs(big[:args.rows_large], big, THRESHOLD))
    same = set(zip(ei.tolist(), ej.tolist(), strict=True)) == set(zip(ni.tolist(), nj.tolist(), strict=True))
    frac = args.rows_large / args.n_large
    rows["large"] = {"n": args.n_large, "rows_timed": args.rows_large, "pairs_in_rows": len(ei), "same_pairs": same,
                     "embedsearch_s": round(t_es, 1), "numpy_s": round(t_np, 1),
                     "embedsearch_peak_gib": round(m_es, 2), "numpy_peak_gib": round(m_np, 2),
                     "bank_gib": round(big.nbytes / 2**30, 2),
                     "full_self_join_extrapolated_h": {
                         "embedsearch (upper triangle)": round(t_es / frac / 2 / 3600, 2),
                         "numpy (all rows)": round(t_np / frac / 3600, 2)}}
    big = None  # freed before the next row

    x, y = data(args.n_labels, args.dim, seed=2, classes=args.label_classes)
    rng = np.random.default_rng(0)
    flip = rng.choice(len(y), len(y) // 20, replace=False)
    yf = y.copy()
    C = args.label_classes
    yf[flip] = (yf[flip] + rng.integers(1, C, len(flip))) % C
    for methods in (("knn",), ("knn", "linear")):
        oof, secs, peak = traced(lambda m=methods: I.out_of_fold(x, yf, C, methods=m, seed=0))
        score, _ = I.label_issue_scores(oof.probs, yf)
        top = set(np.argsort(-score, kind="stable")[:len(flip)].tolist())
        from cleanlab.filter import find_label_issues

        flagged = set(np.flatnonzero(find_label_issues(yf, oof.probs)).tolist())
        hit = len(flagged & set(flip.tolist()))
        rows[f"label_issues_{'+'.join(methods)}"] = {
            "n": args.n_labels, "classes": C, "flipped": len(flip), "seconds": round(secs, 1),
            "peak_gib": round(peak, 2), "top_n_recall": round(len(top & set(flip.tolist())) / len(flip), 4),
            "cleanlab_flagged": len(flagged), "cleanlab_recall": round(hit / len(flip), 4),
            "cleanlab_precision": round(hit / max(1, len(flagged)), 4), "params": oof.params}

    cmd = ("python -m benchmarks insight " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))
    print(json.dumps(rows, indent=1, default=str))
    return {"command": cmd, "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                        **rates.to_dict()}, "threshold": THRESHOLD, "rows": rows}


def render(out: dict) -> str:
    args = SimpleNamespace(**args_from_command(add_arguments, out["command"]))
    cmd, rows = out["command"], out["rows"]
    s, lg = rows["small"], rows["large"]
    li = [(k.removeprefix("label_issues_"), v) for k, v in rows.items() if k.startswith("label_issues")]
    return f"""# Dataset insight at scale

`{cmd}` on {out['machine']['cores']} cores ({out['machine']['float32_gemm_gflops']} GFLOP/s float32 GEMM measured in
the same run). Every pair with cosine ≥ {out['threshold']} among L2-normalized float32 vectors, {args.dim}-d, 1 % planted
near-duplicates.

| | vectors | embedsearch | numpy blocked | same pairs | peak memory (embedsearch / numpy) |
|---|---|---|---|---|---|
| all pairs | {s['n']:,} | {s['embedsearch_s']} s | {s['numpy_s']} s ({s['speedup']}× longer) | {s['same_pairs']} | {s['embedsearch_peak_gib']} / {s['numpy_peak_gib']} GiB |
| first {lg['rows_timed']:,} rows × all | {lg['n']:,} | {lg['embedsearch_s']} s | {lg['numpy_s']} s | {lg['same_pairs']} | {lg['embedsearch_peak_gib']} / {lg['numpy_peak_gib']} GiB (bank {lg['bank_gib']} GiB, not counted) |

The {s['n']:,}-vector self-join (the upper triangle: n²/2 pairs of d multiply-adds, n²·d floating-point
operations) ran at {s['gemm_fraction']:.0%} of the measured GEMM rate. All pairs of {lg['n']:,} vectors, extrapolated from the timed rows:
{lg['full_self_join_extrapolated_h']['embedsearch (upper triangle)']} h with embedsearch's upper-triangle tiles,
{lg['full_self_join_extrapolated_h']['numpy (all rows)']} h for the numpy loop over all rows. That is
extrapolated, not measured.

Label issues: {args.n_labels:,} × {args.dim}, {args.label_classes} classes, 5 % of the labels flipped (seeded). Out-of-fold
probabilities over 5 stratified folds (seed 0), ranked by 1 − p(given label):

| models | time | peak memory | flipped labels in the top N (N = number flipped) | cleanlab `find_label_issues` on the same probabilities: flagged, recall, precision |
|---|---|---|---|---|
""" + "\n".join(f"| {m} | {v['seconds']} s | {v['peak_gib']} GiB | {v['top_n_recall']:.1%} | {v['cleanlab_flagged']:,}, "
                f"{v['cleanlab_recall']:.1%}, {v['cleanlab_precision']:.1%} |" for m, v in li) + "\n"
