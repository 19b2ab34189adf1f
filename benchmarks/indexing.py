"""Benchmark `embedsearch index` against the notebooks' loop (one image at a time, fp32, JSON output).

Same backbone (random-init timm vit_small_patch14_dinov2 at 224 px, so no download is needed), same generated JPEGs,
one run, side by side. Reports images/s and their ratio, bytes per stored vector, and how far bf16-autocast vectors
are from fp32 ones. The reading: docs/benchmarks/indexing.md.

    python -m benchmarks indexing [--n 160] [--model vit_small_patch14_dinov2]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

QUICK = {"n": 16, "model": "vit_tiny_patch16_224"}


def make_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        p = root / f"c{i % 4}" / f"img_{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        a = np.clip(base + rng.normal(0, 40, (300, 400, 3)), 0, 255).astype(np.uint8)  # 400×300, resized to 224
        Image.fromarray(a).save(p, quality=90)


def notebook_loop(model_name: str, files: list[Path], out_json: Path) -> tuple[float, np.ndarray]:
    """What the coursework notebooks did: open, transform, forward one image, collect lists, dump JSON."""
    import timm
    import torch
    from timm.data import create_transform, resolve_model_data_config

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=224).eval()
    cfg = resolve_model_data_config(model)
    cfg["input_size"] = (3, 224, 224)
    tf = create_transform(**cfg, is_training=False)
    t0 = time.perf_counter()
    out = {}
    for f in files:
        x = tf(Image.open(f).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            out[str(f)] = model(x)[0].tolist()
    out_json.write_text(json.dumps(out))
    return time.perf_counter() - t0, np.asarray(list(out.values()), np.float32)


def embedsearch_run(model_name: str, root: Path, name: str, idx_root: Path, **kw) -> tuple[float, dict]:
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.sources.datasets import open_source

    t0 = time.perf_counter()
    src = open_source(str(root))
    cfg = BuildConfig.of(name=name, root=str(idx_root), backbone=f"timm:{model_name}", pretrained=False, image_size=224,
                      **kw)
    summary = build_index(src, cfg, progress=False)
    return time.perf_counter() - t0, summary


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "embedsearch-bench-indexing"),
                    help="working folder, emptied first and left for inspection")


def run(args) -> dict:
    import torch

    from embedsearch.reader import Index
    from embedsearch.store import parts as store

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    make_images(work / "images", args.n)
    src_files = sorted((work / "images").rglob("*.jpg"))
    rows = []

    t_loop, v_loop = notebook_loop(args.model, src_files, work / "embeddings.json")
    json_bytes = (work / "embeddings.json").stat().st_size
    rows.append({"method": "notebook loop (1 image, fp32, JSON)", "seconds": t_loop, "images_per_s": args.n / t_loop,
                 "bytes_per_vector": json_bytes / args.n})

    configs = [("embedsearch fp32, batch 16, 1 worker", dict(batch_size=16, num_workers=1, precision="fp32")),
               ("embedsearch bf16 autocast, batch 16, 1 worker", dict(batch_size=16, num_workers=1, precision="bf16")),
               ("embedsearch bf16 autocast, batch 16, 0 workers", dict(batch_size=16, num_workers=0, precision="bf16"))]
    vecs = {}
    for i, (label, kw) in enumerate(configs):
        t, s = embedsearch_run(args.model, work / "images", f"run{i}", work / "indexes", dtype="float16", **kw)
        ix = Index.open(f"run{i}", work / "indexes")
        ids, v = store.read_all(ix.part_paths)
        vecs[label] = (ids, v)
        part_bytes = sum(p.bytes for p in ix.manifest.parts)
        rows.append({"method": label, "seconds": t, "images_per_s": args.n / t,
                     "runner_images_per_s": s["timings_s"]["images_per_s"], "bytes_per_vector": part_bytes / args.n})
    # float32 storage for the byte comparison
    t, s = embedsearch_run(args.model, work / "images", "f32", work / "indexes", dtype="float32", batch_size=16,
                           num_workers=1, precision="fp32")
    ix = Index.open("f32", work / "indexes")
    rows.append({"method": "embedsearch fp32, float32 storage", "seconds": t, "images_per_s": args.n / t,
                 "runner_images_per_s": s["timings_s"]["images_per_s"],
                 "bytes_per_vector": sum(p.bytes for p in ix.manifest.parts) / args.n})

    # how close are the vectors? (same weights: the seeded random init is identical in every run)
    ids32, v32 = store.read_all(ix.part_paths)
    ref = {int(i): v for i, v in zip(ids32, v32, strict=False)}
    def cos_to_ref(ids, v):
        r = np.stack([ref[int(i)] for i in ids])
        return (np.sum(r * v, 1) / np.linalg.norm(r, axis=1) / np.linalg.norm(v, axis=1)).astype(np.float64)
    c16 = cos_to_ref(*vecs["embedsearch fp32, batch 16, 1 worker"])
    cbf = cos_to_ref(*vecs["embedsearch bf16 autocast, batch 16, 1 worker"])
    dim = v32.shape[1]
    ib, vb = vecs["embedsearch bf16 autocast, batch 16, 1 worker"]
    rb = np.stack([ref[int(i)] for i in ib])
    rel_bf = float((np.abs(vb.astype(np.float32) - rb).max(1) / np.linalg.norm(rb, axis=1)).max())

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    return {"machine": machine, "command": f"python -m benchmarks indexing --n {args.n} --model {args.model}",
            "n": args.n, "model": args.model, "dim": dim, "rows": rows, "json_bytes": json_bytes,
            "float16_vs_float32_cos_min": float(c16.min()), "bf16_vs_fp32_cos_min": float(cbf.min()),
            "bf16_vs_fp32_cos_mean": float(cbf.mean()), "bf16_vs_fp32_max_rel": rel_bf,
            "loop_vs_fp32_max_abs": float(np.abs(np.sort(v_loop.ravel()) - np.sort(v32.ravel())).max())}


def render(r: dict) -> str | None:
    if "json_bytes" not in r:
        return None  # a result saved before the harness (CSV rows only): its reading is the committed one
    rows, n, dim, json_bytes, machine = r["rows"], r["n"], r["dim"], r["json_bytes"], r["machine"]
    base = rows[0]["images_per_s"]
    lines = [
        "# bench_index: `embedsearch index` vs the notebooks' loop", "",
        f"- machine: {machine}", f"- command: `{r['command']}`",
        f"- data: {n} generated 400×300 JPEGs; backbone: random-init timm `{r['model']}` at 224 px (d = {dim})",
        "- embedsearch seconds are the whole `build_index` call (model creation, embedding, Parquet, catalog, FAISS);",
        "  `runner img/s` is the embedding loop alone. The loop's seconds exclude model creation.", "",
        "| method | seconds | images/s | × loop | runner img/s | bytes / vector |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['seconds']:.1f} | {row['images_per_s']:.2f} | "
                     f"{row['images_per_s'] / base:.2f} | {row.get('runner_images_per_s', '')} | "
                     f"{row['bytes_per_vector']:.0f} |")
    lines += ["", f"- float16 storage: {rows[1]['bytes_per_vector']:.0f} bytes/vector = "
              f"{rows[1]['bytes_per_vector'] / (2 * dim):.3f} × 2·d (2·d = {2 * dim}); JSON: {json_bytes / n:.0f} bytes/vector "
              f"({json_bytes / n / rows[1]['bytes_per_vector']:.1f}× larger).",
              f"- float16 storage vs float32 vectors: cosine min {r['float16_vs_float32_cos_min']:.8f}.",
              f"- bf16 autocast vs fp32 (both stored as float16): cosine min {r['bf16_vs_fp32_cos_min']:.6f}, mean "
              f"{r['bf16_vs_fp32_cos_mean']:.6f}, max |Δ| relative to the vector norm {r['bf16_vs_fp32_max_rel']:.2e}.",
              "- `--precision auto` picks bf16 on this CPU (it has AVX512-BF16; see `models/runtime.cpu_has_bf16`), fp32 on CPUs "
              "without native bf16.",
              f"- notebook-loop vectors vs embedsearch fp32 (same weights; JPEG decode identical): max |Δ| "
              f"{r['loop_vs_fp32_max_abs']:.2e} (sorted-value comparison).", "",
              "Reading: on this 2-core CPU the fp32 ViT-S/14 forward is compute-bound at about 10 img/s for every batch",
              "size (measured 1…32), so batching alone buys nothing here; the speed-up comes from bf16 autocast on the",
              "CPU's native bf16 instructions, with decoding overlapped in a worker. The bf16-vs-fp32 distance is",
              "measured on random-init weights; trained weights can differ more (bf16 keeps 8 mantissa bits): pass",
              "`--precision fp32` where bit-level agreement with fp32 matters. On GPUs batching is what matters.", ""]
    return "\n".join(lines)
