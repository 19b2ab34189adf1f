"""`embedsearch eval` as the number of classes grows: 2,500 → 20,000 classes × 2 items (one train, one test),
16-d vectors. Peak memory and output size (result JSON, HTML report) must grow at most linearly with the classes
(issue 12: a dense confusion matrix made 2,500 classes cost 44 MB of JSON, 755 MB of HTML and 9.2 GB of memory).

    python -m benchmarks eval_classes      # a few minutes on the 2-core CI machine; reading: docs/benchmarks/eval_classes.md

Each size is indexed once from imported vectors (`index --vectors`), then evaluated by a fresh
`python -m embedsearch eval` process with the default methods; its peak RSS comes from the kernel (wait4 →
ru_maxrss). With one train item per class nothing can be held out, so the linear, SVC and MLP probes are reported
as not run; prototypes, kNN (weighted and majority) and the few-shot curve run. Vectors: a class centre per class
plus noise, so accuracies are neither 0 nor 1.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SIZES = (2_500, 5_000, 10_000, 20_000)
QUICK = {"sizes": [50, 100]}


def make_index(work: Path, classes: int) -> str:
    rng = np.random.default_rng(classes)
    centres = rng.normal(size=(classes, 16)).astype(np.float32)
    label = np.repeat(np.arange(classes), 2)
    vec = centres[label] + 0.6 * rng.normal(size=(2 * classes, 16)).astype(np.float32)
    name = f"c{classes}"
    pq.write_table(pa.table({"id": np.arange(2 * classes), "label": [f"class{c:05d}" for c in label],
                             "split": ["train", "test"] * classes}), work / f"{name}.parquet")
    np.save(work / f"{name}.npy", vec)
    subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(work / f"{name}.parquet"), "--vectors",
                    str(work / f"{name}.npy"), "--dtype", "float32", "-n", name, "--root", str(work / "ix")],
                   check=True, stdout=subprocess.DEVNULL)
    return name


def run_eval(work: Path, name: str) -> dict:
    html = work / f"{name}.html"
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "embedsearch", "-q", "eval", name, "--root", str(work / "ix"),
                          "--html", str(html), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"eval {name} failed: {err}")
    reports = sorted((work / "ix" / name / "reports").glob("eval-*-*.json"))
    return {"wall_s": round(wall, 2), "json_bytes": sum(f.stat().st_size for f in reports),
            "html_bytes": html.stat().st_size, "results": len(json.loads(out)),
            "not_run": [line.split(":")[1].strip() for line in err.splitlines() if line.startswith("not run:")]}


def peak_rss_of(cmd: list[str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {status}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0


def add_arguments(ap) -> None:
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="class counts, the first the base")


def run(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for classes in args.sizes:
            name = make_index(work, classes)
            rss, wall = peak_rss_of([sys.executable, "-m", "embedsearch", "-q", "eval", name, "--root",
                                     str(work / "ix"), "--html", str(work / f"{name}-rss.html")])
            out = run_eval(work, name)
            rows.append({"classes": classes, "items": 2 * classes, "peak_rss_mib": round(rss / 2**20, 1),
                         "eval_wall_s": round(wall, 2), "json_mib": round(out["json_bytes"] / 2**20, 2),
                         "html_mib": round(out["html_bytes"] / 2**20, 2), "results": out["results"],
                         "not_run": out["not_run"]})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows:
        r["classes_ratio"] = round(r["classes"] / base["classes"], 2)
        r["json_ratio"] = round(r["json_mib"] / base["json_mib"], 2)
        r["html_ratio"] = round(r["html_mib"] / base["html_mib"], 2)
    command = "python -m benchmarks eval_classes" + \
        (f" --sizes {' '.join(map(str, args.sizes))}" if tuple(args.sizes) != SIZES else "")
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "command": command, "rows": rows}
