"""The evaluation methods' GPU paths (linear probe, MLP, kNN) on a lent CUDA machine, against the same code on that
machine's CPU in the same run.

50,000 train × 10,000 test × 2,048-d clustered synthetic vectors (`_harness.make_data`), 10 and 100 classes:
the linear probe's whole C selection (cuda, and at 10 classes also cpu), the MLP probe (cuda), and the exact kNN
search of the DINOv2 protocol (k = 200, certified at 10/20/100/200) on cuda and through FAISS on the CPU, with the
share of identical neighbour sets. The reading: docs/benchmarks/eval_gpu.md; on a lent machine, `--out $OUT`
brings the result back.

    python -m benchmarks eval_gpu --out "$OUT"
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np

from benchmarks._harness import make_data, timed

QUICK = {"n_train": 2000, "n_test": 500, "dim": 64, "classes": [10]}


def add_arguments(ap) -> None:
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--cpu-linear-classes", type=int, nargs="*", default=[10])


def run(args) -> dict:
    import torch

    from embedsearch.core import progress
    from embedsearch.evaluate.methods import knn as M_knn
    from embedsearch.evaluate.methods.linear import linear_probe
    from embedsearch.evaluate.methods.mlp import mlp_probe
    from embedsearch.query import exact

    progress.ENABLED = False
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    rows = []

    def add(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)

    for C in args.classes:
        (xtr, ytr), (xte, yte) = make_data(args.n_train, args.n_test, args.dim, C)

        def acc(scores):
            return round(float((np.asarray(scores).argmax(1) == yte).mean()), 4)

        here = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script on a machine without one
        for dev in [here] + (["cpu"] if C in args.cpu_linear_classes and here == "cuda" else []):
            (pred, params, _), t = timed(lambda: linear_probe(xtr, ytr, C, device=dev))  # noqa: B023
            add(classes=C, method="linear probe: C selection + refit", device=dev, seconds=round(t, 2),
                top1=acc(pred(xte)), note=f"C={params['C']:.3g}, {len(params['C_tried'])} C tried, {params['dtype']}")
        (pred, params, _), t = timed(lambda: mlp_probe(xtr, ytr, C))
        add(classes=C, method="MLP 256 ReLU, early stopping on held-out", device=params["device"], seconds=round(t, 2),
            top1=acc(pred(xte)), note=f"epochs {params['epochs']}")

        (g_s, g_i), t_g = timed(lambda: M_knn.knn_neighbours(xtr, xte, 200, ks=M_knn.KNN_KS))
        real = exact.gpu_bank
        exact.gpu_bank = lambda bank: None  # the FAISS CPU path
        try:
            (c_s, c_i), t_c = timed(lambda: M_knn.knn_neighbours(xtr, xte, 200, ks=M_knn.KNN_KS))
        finally:
            exact.gpu_bank = real
        same = {k: round(float(np.mean([set(a[:k]) == set(b[:k]) for a, b in zip(g_i, c_i, strict=True)])), 6)
                for k in M_knn.KNN_KS}
        add(classes=C, method="kNN exact search, k=200, certified at 10/20/100/200", device=here,
            seconds=round(t_g, 2), top1=None, note=f"identical neighbour sets vs CPU: {same}")
        add(classes=C, method="kNN exact search, k=200, certified at 10/20/100/200", device="cpu (FAISS)",
            seconds=round(t_c, 2), top1=None, note="")

    machine = {"gpu": gpu, "cpu_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__}
    command = "python -m benchmarks eval_gpu " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items())
    return {"machine": machine, "command": command, "config": vars(args), "rows": rows}


def render(result: dict) -> str:
    machine, command, args, rows = result["machine"], result["command"], result["config"], result["rows"]
    md = ["# The evaluation methods on a GPU", "", f"`{command}` on {machine['gpu']} with {machine['cpu_cores']} CPU "
          f"cores (torch {machine['torch']}); {args['n_train']:,} train × {args['n_test']:,} test × {args['dim']}-d "
          "clustered synthetic vectors. Wall seconds of fit + predict.", "",
          "| classes | method | device | seconds | top-1 | note |", "|---|---|---|---|---|---|"]
    md += [f"| {r['classes']} | {r['method']} | {r['device']} | {r['seconds']} | "
           f"{'' if r['top1'] is None else r['top1']} | {r['note']} |" for r in rows]
    return "\n".join(md) + "\n"
