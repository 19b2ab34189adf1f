"""Peak memory of `embedsearch index` over 10,000 / 30,000 / 100,000 tiny generated images: it must not grow with the
number of images beyond the vectors themselves (issue 5, case 12).

    python -m benchmarks scale            # about 5 min on the 2-core CI machine; reading: docs/benchmarks/scale.md

Each run is a fresh `python -m embedsearch index DIR -b pixels:8 --workers 0` process; its peak RSS comes from the
kernel (wait4 → ru_maxrss). Images: 8×8 RGB PNGs with a random colour, 10 class folders. pixels:8 gives 192-d
vectors, so the FAISS Flat index in memory is n × 192 × 4 bytes (plus 8-byte ids); everything else should stay flat.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._harness import random_images

SIZES = (10_000, 30_000, 100_000)
QUICK = {"sizes": [200, 400]}


def make_images(root: Path, n: int, start: int = 0) -> None:
    random_images(root, n, (8, 8), 10, start=start, suffix=".png")


def index_run(folder: Path, home: Path, name: str) -> dict:
    env = {**os.environ, "EMBEDSEARCH_HOME": str(home)}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "embedsearch", "-q", "index", str(folder), "-b", "pixels:8",
                          "--workers", "0", "-n", name, "--json"], env=env, stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"index run failed for {name}")
    summary = json.loads(out)
    return {"images": summary["items"], "embedded": summary["embedded"], "failed": summary["failed"],
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def add_arguments(ap) -> None:
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                    help="image counts, growing; the first is the base of the growth columns")


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="es-scale-"))
    rows = []
    try:
        folder, made = work / "imgs", 0
        for n in args.sizes:
            make_images(folder, n, made)
            made = n
            r = index_run(folder, work / "indexes", f"s{n}")
            r["vectors_mib"] = round(n * 192 * 4 / 2**20, 1)
            rows.append(r)
            print(r, file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    for r in rows:
        r["rss_growth_mib"] = round(r["peak_rss_mib"] - base["peak_rss_mib"], 1)
        r["vectors_growth_mib"] = round(r["vectors_mib"] - base["vectors_mib"], 1)
    command = "python -m benchmarks scale" + \
        (f" --sizes {' '.join(map(str, args.sizes))}" if tuple(args.sizes) != SIZES else "")
    return {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()}, "command": command, "rows": rows}
