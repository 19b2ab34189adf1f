"""The linear probe, the MLP probe and exact kNN on an ImageNet-sized selection on a lent GPU.

1,281,167 train × 50,000 test × 768-d, 1,000 classes (`_harness.make_data`, "power" spectrum: correlated
features with eigenvalues ∝ 1/i), rounded through float16 as `index` stores them. Each method runs the code `eval`
runs, on CUDA; kNN's neighbour sets are checked against the FAISS CPU path on the first --check queries. Peak GPU
memory and host RSS are recorded. Rows are saved as they finish (a timeout keeps the finished ones); on a lent
machine, `--out $OUT` brings them back.

    python -m benchmarks eval_imagenet_gpu --out "$OUT"
"""

from __future__ import annotations

import json
import os
import resource
import time

import numpy as np

from benchmarks._harness import checkpoint, make_data

QUICK = {"n_train": 5000, "n_test": 500, "dim": 64, "classes": 10, "check": 100}


def add_arguments(ap) -> None:
    ap.add_argument("--n-train", type=int, default=1_281_167)
    ap.add_argument("--n-test", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--check", type=int, default=1000, help="queries whose kNN sets are compared with the CPU path")
    ap.add_argument("--methods", default="knn,mlp,linear")


def run(a) -> dict:
    import torch

    from embedsearch.core import progress
    from embedsearch.evaluate.methods import knn as M_knn
    from embedsearch.evaluate.methods.linear import linear_probe
    from embedsearch.evaluate.methods.mlp import mlp_probe
    from embedsearch.query import exact

    progress.ENABLED = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    (xtr, ytr), (xte, yte) = make_data(a.n_train, a.n_test, a.dim, a.classes, spectrum="power")
    xtr, xte = xtr.astype(np.float16), xte.astype(np.float16)  # as the parts store them
    out = {"config": vars(a), "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
           "cpu_cores": os.cpu_count(), "torch": torch.__version__, "data_s": round(time.perf_counter() - t0, 1),
           "train_bytes_float16": int(xtr.nbytes), "rows": []}

    def add(**r):
        r["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None
        r["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        out["rows"].append(r)
        print(json.dumps(r), flush=True)
        checkpoint(out)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def acc(scores):
        return round(float((np.asarray(scores).argmax(1) == yte).mean()), 4)

    for m in a.methods.split(","):
        t0 = time.perf_counter()
        if m == "knn":
            sims, idx = M_knn.knn_neighbours(xtr, xte, 200, ks=M_knn.KNN_KS)
            t = time.perf_counter() - t0
            real = exact.gpu_bank
            exact.gpu_bank = lambda bank: None  # the FAISS CPU path, on the first queries only
            try:
                _, ci = M_knn.knn_neighbours(xtr, xte[:a.check], 200, ks=M_knn.KNN_KS)
            finally:
                exact.gpu_bank = real
            same = {k: float(np.mean([set(x[:k]) == set(y[:k]) for x, y in zip(idx[:a.check], ci, strict=True)]))
                    for k in M_knn.KNN_KS}
            top1 = acc(M_knn.knn_scores(sims, ytr[idx], 20, a.classes, M_knn.KNN_T))
            add(method="kNN exact, k=200 certified at 10/20/100/200, weighted k=20 vote", device=dev,
                seconds=round(t, 1), top1=top1, note=f"identical neighbour sets vs CPU on {a.check} queries: {same}")
        elif m == "mlp":
            pred, params, _ = mlp_probe(xtr, ytr, a.classes)
            t = time.perf_counter() - t0
            add(method="MLP 256 ReLU, early stopping on held-out", device=params["device"], seconds=round(t, 1),
                top1=acc(pred(xte)), note=f"epochs {params['epochs']}")
        elif m == "linear":
            pred, params, _ = linear_probe(xtr, ytr, a.classes, device=dev)
            t = time.perf_counter() - t0
            add(method="linear probe: C selection + refit", device=dev, seconds=round(t, 1), top1=acc(pred(xte)),
                note=f"C={params['C']:.3g}, {len(params['C_tried'])} C tried, {params['dtype']}, iterations "
                     f"{params['iterations']}")
    return out
