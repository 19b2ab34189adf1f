"""Peak memory of building an IVF index whose lists are on disk, against the same index built in memory, in one run.

Data: N synthetic clustered vectors (d-dim, stored as float16 parts) imported with `index --vectors`, so the parts
hold far more than the budget. Each measured step is one `embedsearch verify --repair` process that rebuilds only
the FAISS index from the parts (index.faiss removed first): it reads every part (verify), samples and trains the
quantizer, adds, writes. Peak RSS is the process's ru_maxrss (what the kernel counted, file-backed pages included),
read by a wrapper that runs nothing else.

  baseline   `verify` alone on the same index (nothing rebuilt): importing torch/faiss/duckdb, reading every part and
             checking the 1M-row catalog — what every repair costs before it builds anything
  in-RAM     IVF{K},Flat built in memory (the whole index is resident before it is written)
  on-disk    the same factory with --on-disk --max-memory BUDGET: shards of BUDGET/4, merged with pwrite

Also: one batch of 1,000 queries at nprobe 16 on each (the page cache warm), ids compared.

    python -m benchmarks ondisk [--n 1000000] [--dim 128] [--budget 128MB]   # reading: docs/benchmarks/ondisk.md
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._harness import clustered

QUICK = {"n": 20_000, "dim": 32, "nlist": 64, "budget": "1MB"}
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, r)")


def embedsearch(env, *args, check=True):
    p = subprocess.run([sys.executable, "-m", "embedsearch", "-q", *args], env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise SystemExit(f"embedsearch {' '.join(args)} failed: {p.stderr[-2000:]}")
    return p


def peak_repair(env, name, repair=True) -> tuple[int, float]:
    """Remove index.faiss, rebuild it with `verify --repair` in a fresh process: (peak RSS bytes, seconds).
    `repair=False`: `verify` alone, on the intact index."""
    if repair:
        (Path(env["EMBEDSEARCH_HOME"]) / name / "index.faiss").unlink()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", WRAP, sys.executable, "-m", "embedsearch", "-q", "verify", name,
                        *(["--repair"] if repair else [])], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss, rc = p.stdout.split()[-2:]
    if rc != "0":
        raise SystemExit(f"repair of {name} failed: {p.stderr[-2000:]}")
    return int(rss), wall


def make_index(env, tmp: Path, name: str, x: np.ndarray, *args) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    np.save(tmp / f"{name}.npy", x)
    pq.write_table(pa.table({"label": [f"c{i % 10}" for i in range(len(x))]}), tmp / f"{name}.parquet")
    embedsearch(env, "index", str(tmp / f"{name}.parquet"), "--vectors", str(tmp / f"{name}.npy"), "-n", name,
                "--part-size", "50000", *args)
    (tmp / f"{name}.npy").unlink()


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--budget", default="128MB")


def run(a) -> dict:
    from embedsearch.core.units import parse_size

    budget = parse_size(a.budget)
    factory = f"IVF{a.nlist},Flat"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "EMBEDSEARCH_HOME": str(tmp / "ix")}
        x = clustered(a.n, a.dim)
        print(f"importing {a.n} × {a.dim} vectors twice …", file=sys.stderr)
        make_index(env, tmp, "ram", x, "--index", factory)
        make_index(env, tmp, "disk", x, "--index", factory, "--on-disk", "--max-memory", a.budget)
        del x
        rows = {}
        for name in ("ram", "disk", "baseline"):
            print(f"rebuilding {name} …", file=sys.stderr)
            rss, wall = peak_repair(env, "disk" if name == "baseline" else name, repair=name != "baseline")
            folder = tmp / "ix" / ("disk" if name == "baseline" else name)
            files = {f.name: f.stat().st_size for f in folder.iterdir() if f.name.startswith(("index.", "lists."))}
            parts = sum(f.stat().st_size for f in (folder / "parts").iterdir())
            rows[name] = {"peak_rss_bytes": rss, "wall_s": round(wall, 1), "faiss_files_bytes": files,
                          "parts_bytes": parts}
        from embedsearch.reader import Index
        from embedsearch.store import faiss_index as vindex

        hits = {}
        for name in ("ram", "disk"):
            ix = Index.open(name, tmp / "ix")
            q = ix.vectors(ix.select(limit=1000)["id"])
            index = ix.faiss
            vindex.set_params(index, {"nprobe": 16})
            index.search(vindex.l2_normalize(q), 10)  # warm the page cache
            t0 = time.perf_counter()
            _, ids = index.search(vindex.l2_normalize(q), 10)
            rows[name]["search_1000_queries_s"] = round(time.perf_counter() - t0, 4)
            hits[name] = ids
            ix.close()
    base = rows["baseline"]["peak_rss_bytes"]
    for name in ("ram", "disk"):
        rows[name]["peak_rss_above_baseline_bytes"] = rows[name]["peak_rss_bytes"] - base
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version(),
                       "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
           "command": f"python -m benchmarks ondisk --n {a.n} --dim {a.dim} --nlist {a.nlist} --budget {a.budget}",
           "n": a.n, "dim": a.dim, "factory": factory, "budget_bytes": budget, "rows": rows,
           "same_ids_at_nprobe16": bool((hits["ram"] == hits["disk"]).all())}
    return out


def render(out: dict) -> str:
    """The reading, docs/benchmarks/ondisk.md, from a result (`--render` re-renders a saved one without re-running)."""
    mib, rows, budget = 2**20, out["rows"], out["budget_bytes"]
    lines = ["# On-disk IVF: peak memory of the build against the in-memory build", "",
             f"`{out['command']}` — {out['machine']['cores']} cores, {out['machine'].get('ram_gib', '?')} GiB RAM, "
             f"Python {out['machine']['python']}.", "",
             f"{out['n']:,} × {out['dim']}-d vectors (float16 parts, {rows['ram']['parts_bytes'] / mib:.0f} MiB), "
             f"{out['factory']}, budget --max-memory {budget / mib:.0f} MiB. Each row is one `verify --repair` "
             "process that rebuilds only the FAISS index from the parts; peak RSS is its ru_maxrss.", "",
             "| build | peak RSS (MiB) | above baseline (MiB) | wall (s) | FAISS files (MiB) | 1,000 queries, nprobe 16 (s) |",
             "|---|---|---|---|---|---|"]
    for name, label in (("baseline", "baseline: verify alone"), ("ram", "in memory"), ("disk", "on disk")):
        r = rows[name]
        above = f"{r['peak_rss_above_baseline_bytes'] / mib:.0f}" if name != "baseline" else "—"
        lines.append(f"| {label} | {r['peak_rss_bytes'] / mib:.0f} | {above} | {r['wall_s']} | "
                     f"{sum(r['faiss_files_bytes'].values()) / mib:.0f} | {r.get('search_1000_queries_s', '—')} |")
    disk_above = rows["disk"]["peak_rss_above_baseline_bytes"]
    lines += ["", f"On disk, the build raises the process's peak {disk_above / mib:.0f} MiB above what `verify` alone "
              f"reaches ({'within' if disk_above <= budget else 'ABOVE'} the {budget / mib:.0f} MiB budget); in "
              f"memory, {rows['ram']['peak_rss_above_baseline_bytes'] / mib:.0f} MiB (the whole index). Same ids "
              f"at nprobe 16: {out['same_ids_at_nprobe16']}.", "",
              "Read with care: ru_maxrss is the peak of the whole process, and verify's peak (imports, the catalog, "
              "part reads) and the build's come at different moments, so the build alone may hold more than the "
              "difference shown, up to the on-disk peak minus what stays resident after verify. What the numbers do "
              "show is the side-by-side: the in-memory build adds the index's size to the peak, the on-disk build "
              "does not. Queries on the on-disk index read lists through the page cache (warm here); with a cold "
              "cache each probed list is a disk read.", ""]
    return "\n".join(lines)
