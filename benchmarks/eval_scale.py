"""Every default `eval` method at CIFAR scale on this machine, each measured against the plan's estimate.

Clustered synthetic vectors as `_harness.make_data` makes them (Gaussian clusters, anisotropic scales, a common offset),
50,000 train × 10,000 test by default. Each method runs through the same code `embedsearch eval` runs (fit on the
train set, score the test rows in blocks), so the total is what `eval` with the default methods takes, less
reading the parts. The machine's float32 GEMM rate and memory bandwidth are measured in the same run; the
estimate column is what `eval` prints as its plan. Each result carries the newest saved one's runs before its own
(a section per configuration in the reading, docs/benchmarks/eval_scale.md).

    python -m benchmarks eval_scale --dim 2048 --classes 10
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time

import numpy as np

from benchmarks._harness import latest, load, make_data

QUICK = {"n_train": 2000, "n_test": 500, "dim": 64, "methods": "prototypes,knn,linear"}


def add_arguments(ap) -> None:
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--methods", default="prototypes,knn,linear,svc,mlp,fewshot")


def run(args) -> dict:
    from embedsearch.core import progress
    from embedsearch.evaluate import score_in_blocks
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
            for f, (_, pred, _, _) in zip(fitted, score_in_blocks(fitted, xte, yte, np.arange(len(yte)) + 10**9,
                                                                  np.ones(args.classes, bool)), strict=True):
                top1[f.variant] = round(float((pred == yte).mean()), 4)
        took = time.perf_counter() - t0
        rows.append({"method": name, "estimate_s": round(est, 1), "took_s": round(took, 1), "top1": top1})
        print(json.dumps(rows[-1]), flush=True)
    out = {"config": vars(args), "machine": {"cpu": platform.processor() or platform.machine(),
                                             "cores": os.cpu_count(), **rates.to_dict()},
           "command": "python -m benchmarks eval_scale " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                       for k, v in vars(args).items()),
           "rows": rows, "total_s": round(sum(r["took_s"] for r in rows), 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    previous = latest("eval_scale")
    runs = _runs(load(previous)) if previous else []
    return {"runs": [*runs, out]}


def _runs(doc) -> list:
    return doc if isinstance(doc, list) else doc["runs"]  # a list: saved before the harness


def render(result) -> str:
    runs = _runs(result)
    md = ["# Every default eval method at scale, against the plan's estimate", "",
          "Written by `python -m benchmarks eval_scale` (one run per section; the machine's rates measured in it).",
          ""]
    for r in runs:
        c = r["config"]
        md += [f"## {c['n_train']:,} train × {c['n_test']:,} test × {c['dim']}-d, {c['classes']} classes", "",
               f"`{r['command']}` on {r['machine']['cores']} cores, {r['machine']['float32_gemm_gflops']} GFLOP/s, "
               f"{r['machine']['memory_gbytes_per_s']} GB/s; total {r['total_s'] / 60:.1f} min, peak RSS "
               f"{r['peak_rss_gb']} GB", "", "| method | estimate s | took s | top-1 |", "|---|---|---|---|"]
        md += [f"| {x['method']} | {x['estimate_s']} | {x['took_s']} | "
               + ", ".join(f"{k}: {v}" for k, v in x["top1"].items()) + " |" for x in r["rows"]]
        md.append("")
    return "\n".join(md)
