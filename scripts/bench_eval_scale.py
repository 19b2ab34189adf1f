"""Every default `eval` method at CIFAR scale on this machine, each measured against the plan's estimate.

Clustered synthetic vectors as bench_eval.py makes them (Gaussian clusters, anisotropic scales, a common offset),
50,000 train × 10,000 test by default. Each method runs through the same code `embedsearch eval` runs (fit on the
train set, score the test rows in blocks), so the total is what `eval` with the default methods takes, less
reading the parts. The machine's float32 GEMM rate and memory bandwidth are measured in the same run; the
estimate column is what `eval` prints as its plan. Writes scripts/bench_eval_scale.json and .md (appending a row
set per configuration).

    python scripts/bench_eval_scale.py --dim 2048 --classes 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
from bench_eval import make_data  # noqa: E402 — the same synthetic data as the other eval benchmarks

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--methods", default="prototypes,knn,linear,svc,mlp,fewshot")
    args = ap.parse_args()

    from embedsearch.core import progress
    from embedsearch.evaluate import _score_in_blocks
    from embedsearch.evaluate.methods import REGISTRY, Context, Shape, TrainSet, measure_rates

    progress.ENABLED = True
    (xtr, ytr), (xte, yte) = make_data(args.n_train, args.n_test, args.dim, args.classes)
    rates = measure_rates()
    ctx = Context(n_test=len(yte))
    shape = Shape(len(ytr), len(yte), args.dim, args.classes, 4)
    train = TrainSet(xtr, ytr, np.arange(len(ytr)), args.classes, 0)
    rows = []
    for name in args.methods.split(","):
        m = REGISTRY[name]
        est = m.estimate(shape, rates, ctx)
        t0 = time.perf_counter()
        if m.kind == "curve":
            _, curve = m.curve(train, xte, yte, ctx)
            top1 = {"all-shot kNN": round(curve[-1]["knn_mean"], 4)}
        else:
            fitted = m.fit(train, ctx)
            top1 = {}
            for f, (_, pred, _, _) in zip(fitted, _score_in_blocks(fitted, xte, yte, np.arange(len(yte)) + 10**9,
                                                                  np.ones(args.classes, bool)), strict=True):
                top1[f.variant] = round(float((pred == yte).mean()), 4)
        took = time.perf_counter() - t0
        rows.append({"method": name, "estimate_s": round(est, 1), "took_s": round(took, 1), "top1": top1})
        print(json.dumps(rows[-1]), flush=True)
    out = {"config": vars(args), "machine": {"cpu": platform.processor() or platform.machine(),
                                             "cores": os.cpu_count(), **rates.to_dict()},
           "command": "python scripts/bench_eval_scale.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                       for k, v in vars(args).items()),
           "rows": rows, "total_s": round(sum(r["took_s"] for r in rows), 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    path = HERE / "bench_eval_scale.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(out)
    path.write_text(json.dumps(runs, indent=1) + "\n")
    md = ["# Every default eval method at scale, against the plan's estimate", "",
          "Written by `scripts/bench_eval_scale.py` (one run per section; the machine's rates measured in it).", ""]
    for r in runs:
        c = r["config"]
        md += [f"## {c['n_train']:,} train × {c['n_test']:,} test × {c['dim']}-d, {c['classes']} classes", "",
               f"`{r['command']}` on {r['machine']['cores']} cores, {r['machine']['float32_gemm_gflops']} GFLOP/s, "
               f"{r['machine']['memory_gbytes_per_s']} GB/s; total {r['total_s'] / 60:.1f} min, peak RSS "
               f"{r['peak_rss_gb']} GB", "", "| method | estimate s | took s | top-1 |", "|---|---|---|---|"]
        md += [f"| {x['method']} | {x['estimate_s']} | {x['took_s']} | "
               + ", ".join(f"{k}: {v}" for k, v in x["top1"].items()) + " |" for x in r["rows"]]
        md.append("")
    (HERE / "bench_eval_scale.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
