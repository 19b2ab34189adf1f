"""kNN certification cost on data with near-duplicates, side by side in one run.

Issue 14: on CIFAR-10 pixels (3,072-d) a plain FAISS search plus the votes took 9.9 s, embedsearch's exact kNN 73 s,
because the float32 error bound (2·EPS ≈ 3.7e-4 at 3,072-d) is wider than the gaps between neighbours (median
≈ 3e-5 at rank 200 here), so the old "runs linked by gaps ≤ 2·EPS" grew to the end of the candidate list and most rows
fell back to a float64 search of the whole bank. Rows compared, on the same vectors:

- plain FAISS exact float32 top-233 + nothing (the floor),
- embedsearch's knn_neighbours (bands of ±2·EPS around each cut-off re-scored in float64, longer lists only for
  the rows whose band reaches the end),
- the same function at a baseline git revision (default 4c0ab34, before this change),

and whether the two embedsearch versions return the same neighbour sets at k ∈ {10, 20, 100, 200}.

    python -m benchmarks knn_neardup [--d 3072] [--queries 2000] [--baseline-rev 4c0ab34]

The reading: docs/benchmarks/knn_neardup.md.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._harness import ROOT, timed

QUICK = {"d": 256, "n_train": 5000, "queries": 200}


def make(n_train, n_test, d, n_classes=10, seed=0, dup=0.05, rank=64):
    """Clustered, correlated (low-rank factors), positive offset like pixels; 5 % of test items are re-encoded train
    items (noise 1e-3) and 5 % of train items copies of others (half exact, half with noise 1e-3)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, rank)) * 0.6
    F = rng.normal(size=(rank, d)).astype(np.float32) / np.sqrt(rank)
    scales = rng.uniform(0.5, 2.0, d).astype(np.float32)

    def draw(n):
        y = rng.integers(0, n_classes, n)
        z = (centers[y] + rng.normal(size=(n, rank))).astype(np.float32)
        return ((z @ F + 0.5 * rng.normal(size=(n, d)).astype(np.float32)) * scales + 3.0).astype(np.float32), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    m = int(dup * n_test)
    src = rng.choice(n_train, m, replace=False)
    xte[:m] = xtr[src] + rng.normal(size=(m, d)).astype(np.float32) * 1e-3
    m2 = int(dup * n_train)
    a, b = rng.choice(n_train, m2, replace=False), rng.choice(n_train, m2, replace=False)
    xtr[a] = xtr[b] + rng.normal(size=(m2, d)).astype(np.float32) * 1e-3 * (rng.random((m2, 1)) < 0.5)
    return xtr, ytr, xte, yte


def baseline_module(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:embedsearch/evaluate/methods/knn.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "knn_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("knn_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["knn_baseline"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def add_arguments(ap) -> None:
    ap.add_argument("--d", type=int, default=3072)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--baseline-rev", default="4c0ab34")


def run(a) -> dict:
    import faiss
    import torch

    from embedsearch.core.vectors import l2_normalize
    from embedsearch.evaluate.methods import knn as M
    from embedsearch.query import exact

    xtr, _, xte, _ = make(a.n_train, a.queries, a.d)
    ks = (10, 20, 100, 200)
    b, q = l2_normalize(xtr), l2_normalize(xte)
    faiss.knn(q[:50], b, 233, metric=faiss.METRIC_INNER_PRODUCT)  # warm-up
    (s32, _), t_plain = timed(lambda: faiss.knn(q, b, 233, metric=faiss.METRIC_INNER_PRODUCT))
    (_, ours), t_ours = timed(lambda: M.knn_neighbours(xtr, xte, 200, ks=ks))
    old = baseline_module(a.baseline_rev)
    (_, base), t_base = timed(lambda: old.knn_neighbours(xtr, xte, 200, ks=ks))
    same = all([set(r) for r in ours[:, :k]] == [set(r) for r in base[:, :k]] for k in ks)
    eps2 = 2 * exact.float32_dot_error(a.d)
    gaps = s32[:, :-1] - s32[:, 1:]
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
                      f"({torch.get_num_threads()} threads), faiss {faiss.__version__}",
           "command": "python -m benchmarks knn_neardup " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                     for k, v in vars(a).items()),
           "data": f"{a.n_train} × {a.d} train, {a.queries} queries, 5 % near-duplicates (seed 0)",
           "two_eps": eps2, "median_gap_at_rank_200": float(np.median(gaps[:, 199])),
           "rows_with_a_gap_below_2eps_at_some_k": int((gaps[:, [k - 1 for k in ks]] <= eps2).any(axis=1).sum()),
           "plain_faiss_s": round(t_plain, 3), "embedsearch_s": round(t_ours, 3),
           f"baseline_{a.baseline_rev}_s": round(t_base, 3), "same_sets_as_baseline": same,
           "embedsearch_over_plain": round(t_ours / t_plain, 3), "baseline_over_plain": round(t_base / t_plain, 3)}
    return res
