"""kNN and prototypes on an ImageNet-sized float16 train bank: 1,000,000 × 768, 1,000 classes, in bounded memory.

The bank is generated as float16 (2 bytes a value, as `--dtype float16` indexes store it: 1.4 GiB). Its normalized
float32 copy would be 2.9 GiB, above knn.BANK_BYTES, so the search normalizes and searches it a chunk of 65,536
rows at a time. It is timed against the machine's float32 GEMM rate measured in the same run. Prototypes are one
pass in class order. Peak RSS is the process's ru_maxrss, after the bank is made. The reading:
docs/benchmarks/eval_million.md.

    python -m benchmarks eval_million [--n 1000000] [--queries 10000]
"""

from __future__ import annotations

import os
import platform
import resource
import time
from types import SimpleNamespace

import numpy as np

QUICK = {"n": 20_000, "queries": 500, "dim": 64, "classes": 100}


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)


def run(args) -> dict:
    from embedsearch.core import progress
    from embedsearch.evaluate.methods import knn as M_knn
    from embedsearch.evaluate.methods import measure_rates
    from embedsearch.evaluate.methods.prototypes import prototype_scores, prototypes

    progress.ENABLED = True
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.classes, args.dim)).astype(np.float32) * 0.5
    y = rng.integers(0, args.classes, args.n)
    bank = np.empty((args.n, args.dim), np.float16)
    for a in range(0, args.n, 65536):  # generated a block at a time, stored as float16
        b = slice(a, a + 65536)
        bank[b] = centers[y[b]] + rng.standard_normal((len(y[b]), args.dim), np.float32)
    yq = rng.integers(0, args.classes, args.queries)
    q = (centers[yq] + rng.standard_normal((args.queries, args.dim), np.float32)).astype(np.float32)
    rss_data = rss_gib()
    rates = measure_rates()

    t0 = time.perf_counter()
    protos, has = prototypes(bank, y, args.classes)
    top1_p = float((prototype_scores(protos, has, q).argmax(1) == yq).mean())
    t_proto = time.perf_counter() - t0

    t0 = time.perf_counter()
    sims, idx = M_knn.knn_neighbours(M_knn.Bank(bank), q, 20, ks=(10, 20))
    t_knn = time.perf_counter() - t0
    votes = np.array([np.bincount(y[i], minlength=args.classes).argmax() for i in idx])
    flops = 2 * args.n * args.queries * args.dim
    out = {"config": vars(args), "machine": {"cpu": platform.processor() or platform.machine(),
                                             "cores": os.cpu_count(), **rates.to_dict()},
           "command": "python -m benchmarks eval_million " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
           "bank_gib_float16": round(bank.nbytes / 2**30, 2),
           "prototypes_s": round(t_proto, 1), "prototypes_top1": round(top1_p, 4),
           "prototypes_gb_per_s": round(bank.nbytes / t_proto / 1e9, 2),
           "knn_s": round(t_knn, 1), "knn_majority20_top1": round(float((votes == yq).mean()), 4),
           "knn_fraction_of_gemm_rate": round(flops / t_knn / rates.flops, 3),
           "peak_rss_gib_after_data": round(rss_data, 2), "peak_rss_gib": round(rss_gib(), 2)}
    return out


def render(out: dict) -> str:
    args = SimpleNamespace(**out["config"])
    return f"""# kNN and prototypes on a 1,000,000 × 768 float16 bank

`{out['command']}` on {out['machine']['cores']} cores ({out['machine']['float32_gemm_gflops']} GFLOP/s float32
GEMM, {out['machine']['memory_gbytes_per_s']} GB/s streaming sum, both measured in the same run). The
{args.classes} classes are Gaussian clusters, and there are {args.queries:,} queries.

| | value |
|---|---|
| bank (float16) | {out['bank_gib_float16']} GiB |
| prototypes (one pass over the bank, then score the queries) | {out['prototypes_s']} s, {out['prototypes_gb_per_s']} GB/s of float16 read, top-1 {out['prototypes_top1']} |
| exact kNN, k = 20, certified at 10 and 20, streamed in 65,536-row chunks | {out['knn_s']} s, {out['knn_fraction_of_gemm_rate']:.0%} of the GEMM rate, majority top-1 {out['knn_majority20_top1']} |
| peak RSS after generating the data | {out['peak_rss_gib_after_data']} GiB |
| peak RSS at the end | {out['peak_rss_gib']} GiB |

The normalized float32 copy of the bank would be {args.n * args.dim * 4 / 2**30:.1f} GiB. The search holds one
chunk of it at a time, so the difference between the two RSS rows is what prototypes and kNN added.
"""
