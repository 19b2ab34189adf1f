"""Near-duplicate pairs from each item's K nearest neighbours at scale: the approximate candidate search (IVF-Flat
tuned until a seeded sample finds 99 % of the exact K nearest) against exact search, side by side.

What `duplicates`/`leaks` run after calibration (evaluate/insight.calibrated_pairs): every item's K = 10 nearest
other items, a pair kept when its score (here plain cosine, threshold 0.95) passes the threshold. Data: clustered
vectors (benchmarks/_harness.clustered) with 1 % of the rows replaced by noisy copies of others (the planted
near-duplicates).

- slice: both paths on the first `--slice` vectors; the exact pairs are the ground truth (recall of the pairs).
- full: the approximate path on all `--n`; recall against exact search for a seeded sample of `--sample` items
  (their exact K nearest over the whole bank, the pairs among them that pass). Peak RSS of the process is stated
  (FAISS's memory is not seen by tracemalloc).

    python -m benchmarks pairs [--n 1000000] [--slice 100000] [--d 384] [--sample 2000]
"""

from __future__ import annotations

import resource
import time
from types import SimpleNamespace

import numpy as np

from benchmarks import _harness as H

QUICK = {"n": 20_000, "slice": 5_000, "d": 64, "sample": 500}
THRESHOLD = 0.95


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--slice", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--sample", type=int, default=2000)


def data(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = H.clustered(n, d, seed)
    r = np.random.default_rng(seed + 1)
    dup, src = r.choice(n, n // 100, replace=False), r.choice(n, n // 100, replace=False)
    x[dup] = x[src] + 0.05 * r.standard_normal((len(dup), d)).astype(np.float32)
    return x


def pairs(x: np.ndarray, exact: bool) -> tuple[set, dict, float]:
    from embedsearch.evaluate.insight import calibrated_pairs

    cal = SimpleNamespace(score="cosine", threshold=THRESHOLD, candidates=None)
    t = time.perf_counter()
    i, j, _ = calibrated_pairs(x, cal, exact=exact)  # the path under test, whatever the size
    secs = time.perf_counter() - t
    return set(zip(i.tolist(), j.tolist(), strict=True)), cal.candidates, secs


def sample_truth(x: np.ndarray, rows: np.ndarray) -> set:
    """The exact pairs (each once, i < j) that the sampled rows' exact K nearest give at the threshold."""
    from embedsearch.core.vectors import drop_self, l2_normalize
    from embedsearch.evaluate.calibration import K
    from embedsearch.query.exact import Bank, topk

    s, i = topk(Bank(x), l2_normalize(x[rows]), K + 1)
    i, s = drop_self(i, s, rows, K)
    out = set()
    for r, (ii, ss) in enumerate(zip(i, s, strict=True)):
        for j, v in zip(ii.tolist(), ss.tolist(), strict=True):
            if j >= 0 and v >= THRESHOLD:
                out.add((min(rows[r], j), max(rows[r], j)))
    return out


def run(args) -> dict:
    from embedsearch.core import progress

    progress.ENABLED = False
    rows = {}
    pairs(data(2000, args.d, seed=3), exact=True)  # warm-up: the first search measures the CPU's backends
    xs = data(args.slice, args.d)
    exact, _, t_exact = pairs(xs, exact=True)
    approx, cand, t_approx = pairs(xs, exact=False)
    rows["slice"] = {"n": args.slice, "exact_s": round(t_exact, 1), "approx_s": round(t_approx, 1),
                     "speedup": round(t_exact / t_approx, 2), "exact_pairs": len(exact),
                     "recall": round(len(exact & approx) / max(1, len(exact)), 4),
                     "extra_pairs": len(approx - exact), "candidates": cand}
    xs = None
    x = data(args.n, args.d)
    approx, cand, t_approx = pairs(x, exact=False)
    sample = np.sort(np.random.default_rng(7).choice(args.n, args.sample, replace=False))
    truth = sample_truth(x, sample)
    mine = {p for p in approx if p[0] in set(sample.tolist()) or p[1] in set(sample.tolist())}
    found = {p for p in truth if p in approx}
    rows["full"] = {"n": args.n, "approx_s": round(t_approx, 1), "pairs": len(approx), "candidates": cand,
                    "sample": args.sample, "sample_exact_pairs": len(truth),
                    "recall_on_sample": round(len(found) / max(1, len(truth)), 4),
                    "sample_pairs_found": len(mine),
                    "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                    "vectors_gib": round(x.nbytes / 2**30, 2)}
    cmd = "python -m benchmarks pairs " + " ".join(f"--{k} {getattr(args, k)}" for k in ("n", "slice", "d", "sample"))
    return {"command": cmd, "machine": H.machine_slug(), "threshold": THRESHOLD, "rows": rows}


def render(out: dict) -> str:
    r = out["result"] if "result" in out else out
    out = r
    s, f = r["rows"]["slice"], r["rows"]["full"]
    fell_back = s["candidates"].get("kind") == "exact"
    return (f"# Near-duplicate pairs at scale\n\nCommand: `{out.get('command')}`; machine: {out.get('machine')}.\n\n"
            "| rows | path | time | pairs | recall of the exact pairs | candidates |\n|---|---|---|---|---|---|\n"
            f"| {s['n']:,} | exact | {s['exact_s']} s | {s['exact_pairs']:,} | 1 (the truth) | exact |\n"
            f"| {s['n']:,} | approximate | {s['approx_s']} s"
            + (" (fell back to exact: 99 % not reached within a quarter of the lists)" if fell_back else
               f" ({s['speedup']}× faster)")
            + f" | {s['exact_pairs']:,} found + {s['extra_pairs']} | {s['recall']} | {s['candidates']} |\n"
            f"| {f['n']:,} | approximate | {f['approx_s']} s | {f['pairs']:,} | {f['recall_on_sample']} on "
            f"{f['sample']:,} sampled items' {f['sample_exact_pairs']} exact pairs | {f['candidates']} |\n\n"
            f"Peak RSS {f['peak_rss_gib']} GiB for {f['vectors_gib']} GiB of vectors.\n")
