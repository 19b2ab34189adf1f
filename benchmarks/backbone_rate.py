"""`embedsearch index` throughput against the model's own bare batched forward, in the same run (issue 13's
target: ≥ 85 %). Backbone: a random-init torchvision ResNet-50 at 224 px (no download), fp32, on generated 400×300
JPEGs; the bare rate is the forward alone on already-preprocessed tensors of the same batch size, so the ratio is
what decoding, preprocessing, the runner, Parquet and the catalog cost on top of the model.

    python -m benchmarks backbone_rate [--n 256] [--batch-size 32]   # reading: docs/benchmarks/backbone_rate.md
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._harness import random_images

SPEC = "torchvision:resnet50"
QUICK = {"n": 16, "batch_size": 8}


def bare_rate(n: int, batch: int) -> float:
    import torch

    from embedsearch.models.backbones import create_backbone

    bb = create_backbone(SPEC, pretrained=False)
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        bb.embed(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n:
            bb.embed(x)
            done += batch
    return done / (time.perf_counter() - t0)


def index_rate(folder: Path, root: Path, batch: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(folder), "-b", SPEC,
                          "--random-init", "--precision", "fp32", "--batch-size", str(batch), "-n", "r50",
                          "--root", str(root), "--json"], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    s = json.loads(out)
    return {"wall_s": wall, "embedded": s["embedded"], "embed_s": s["timings_s"]["wall"],
            "timings_s": s["timings_s"]}


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)


def run(args) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_images(Path(tmp) / "img", args.n, (300, 400), 4, digits=5)
        bare = bare_rate(args.n, args.batch_size)
        idx = index_rate(folder, Path(tmp) / "ix", args.batch_size)
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                       f"torch {torch.__version__}, CPU only",
            "command": f"python -m benchmarks backbone_rate --n {args.n} --batch-size {args.batch_size}",
            "n": args.n, "bare_images_per_s": bare, "index": idx}


def render(r: dict) -> str:
    bare, idx = r["bare_images_per_s"], r["index"]
    run_rate = idx["embedded"] / idx["embed_s"]
    wall_rate = idx["embedded"] / idx["wall_s"]
    lines = ["# `embedsearch index` vs the bare forward (torchvision ResNet-50, 224 px, fp32, random init)", "",
             f"- machine: {r['machine']}",
             f"- command: `{r['command']}`",
             f"- data: {r['n']} generated 400×300 JPEGs; the bare forward runs on random 224 px tensors of the same "
             "batch size", "",
             "| what | images/s | ratio to bare forward |", "|---|---:|---:|",
             f"| bare batched forward (`Backbone.embed`) | {bare:.2f} | 1.00 |",
             f"| `embedsearch index`, run time (decode → embed → Parquet/catalog) | {run_rate:.2f} | "
             f"{run_rate / bare:.2f} |",
             f"| `embedsearch index`, whole process (imports, model creation, FAISS) | {wall_rate:.2f} | "
             f"{wall_rate / bare:.2f} |", "",
             f"Per-stage timings of the index run (s): `{json.dumps(idx['timings_s'])}`", ""]
    return "\n".join(lines)
