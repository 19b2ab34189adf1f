"""`embedsearch eval` end to end on a CIFAR- or ImageNet-sized index: its default methods, or `--methods`.

Imports n_train + n_test clustered synthetic vectors (`_harness.make_data`, stored float16 as `index`
stores them) with a split column, then runs `embedsearch eval NAME` exactly as a user would, in a subprocess, and
records its wall time, its peak RSS (the eval process alone: it is the only child of a small wrapper process), its
stderr (the plan, the progress bars' last states, the time table) and the time table from the run's summary JSON.
The reading: docs/benchmarks/STEM.md, results under benchmarks/results/STEM/ (STEM: eval_cli unless --stem).

    python -m benchmarks eval_cli --n-train 50000 --n-test 10000 --dim 2048 --classes 10
    python -m benchmarks eval_cli --n-train 1281167 --n-test 10000 --dim 768 --classes 1000 \
        --methods prototypes,knn,fewshot --stem eval_cli_imagenet
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks._harness import args_from_command, make_data

QUICK = {"n_train": 2000, "n_test": 500, "dim": 64, "methods": "prototypes,knn,linear"}


READING = """Reading: the run is far under the 10 minutes asked, with the plan and the leak search's estimate printed
before any method runs. History on this machine: 7.2 min before few-shot computed each test block's similarities
once for all its samples (few-shot alone took 182 s, now about 30 s), 3.9 min after; the shared host's measured
FLOP/s rose between those runs too (128 → 207 GFLOP/s), so compare steps with the rates each run measured, and see
the CHANGELOG for the side-by-side few-shot measurement (4.4×). Estimates are within 2× of the measured times
except where the correlated features make the linear probe converge in 14–20 iterations per C. The synthetic
"power" features are hard for cosine methods (prototypes and kNN far below the linear probe): their few leading
directions and common offset dominate the cosine; the times, not those accuracies, are what this page measures."""


# runs the command given after it, then prints the peak RSS of its children (that command alone) on stderr
PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
        "print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
        "sys.exit(r)")


def add_arguments(ap) -> None:
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--spectrum", choices=["flat", "power"], default="power",
                    help="make_data's features: power = correlated, eigenvalues ∝ 1/i, like a backbone's")
    ap.add_argument("--methods", default=None, help="comma list passed to eval (default: its default methods)")
    ap.add_argument("--stem", default="eval_cli",
                    help="names the results folder (benchmarks/results/STEM/) and the reading (docs/benchmarks/STEM.md)")


def run(a) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = {**os.environ, "EMBEDSEARCH_HOME": str(tmp / "ix")}
        (xtr, ytr), (xte, yte) = make_data(a.n_train, a.n_test, a.dim, a.classes, spectrum=a.spectrum)
        v = np.lib.format.open_memmap(tmp / "v.npy", "w+", np.float32, (len(xtr) + len(xte), a.dim))
        v[:len(xtr)], v[len(xtr):] = xtr, xte  # no concatenated copy: ImageNet-sized train is 3.9 GB
        v.flush()
        del v
        y = np.concatenate([ytr, yte])
        pq.write_table(pa.table({"label": [f"c{c}" for c in y],
                                 "split": ["train"] * len(ytr) + ["test"] * len(yte)}), tmp / "labels.parquet")
        del xtr, xte
        subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(tmp / "labels.parquet"),
                        "--vectors", str(tmp / "v.npy"), "-n", "bench"], env=env, check=True)
        t0 = time.perf_counter()
        methods = ["--methods", a.methods] if a.methods else []
        p = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "embedsearch", "eval", "bench",
                            *methods], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"eval failed ({p.returncode}): {p.stderr[-3000:]}")
        peak_gib = int(re.search(r"PEAK_RSS_KIB (\d+)", p.stderr).group(1)) / 2**20
        stored_gib = (a.n_train + a.n_test) * a.dim * 2 / 2**30
        run_id = re.search(r"evaluation run (\w+)", p.stdout).group(1)
        summary = json.loads((tmp / "ix" / "bench" / "reports" / f"eval-{run_id}.json").read_text())
    # the log: each progress bar's final state (tqdm rewrites its line with \r), every other line as printed
    log = "\n".join(line.split("\r")[-1] for line in p.stderr.splitlines()
                    if line.split("\r")[-1].strip() and not line.startswith("PEAK_RSS_KIB"))
    command = f"python -m benchmarks eval_cli --n-train {a.n_train} --n-test {a.n_test} --dim {a.dim} " \
              f"--classes {a.classes} --spectrum {a.spectrum}" + \
              (f" --methods {a.methods}" if a.methods else "") + (f" --stem {a.stem}" if a.stem != "eval_cli" else "")
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       **summary["machine"]},
           "command": command, "eval_wall_s": round(wall, 1), "peak_rss_gib": round(peak_gib, 2),
           "stored_vectors_gib": round(stored_gib, 2), "preamble": summary.get("preamble", []),
           "timings": summary["timings"], "skipped": summary["skipped"], "stdout": p.stdout, "config": vars(a),
           "stderr_log": log + "\n"}
    return out


def render(out: dict) -> str:
    a = SimpleNamespace(**(out.get("config") or args_from_command(add_arguments, out["command"])))
    wall, summary = out["eval_wall_s"], out
    # results saved before the peak RSS was measured have no peak
    peak = (f"; peak RSS of the eval process **{out['peak_rss_gib']:.2f} GiB** ({out['stored_vectors_gib']:.2f} GiB "
            "of float16 vectors stored)") if "peak_rss_gib" in out else ""
    command = out["command"]
    which = f"--methods {a.methods}" if a.methods else "the default methods"
    md = [f"# `embedsearch eval` with {which}, {a.n_train:,} train × {a.n_test:,} test × {a.dim}-d, "
          f"{a.classes} classes ({a.spectrum} spectrum)", "",
          f"`{command}` on {out['machine'].get('cores')} cores ({summary['machine'].get('float32_gemm_gflops')} GFLOP/s, "
          f"{summary['machine'].get('memory_gbytes_per_s')} GB/s measured by the run itself). The vectors are "
          "imported into a real index (float16 parts), then `embedsearch eval bench` runs in a subprocess as a user "
          f"would run it: **{wall / 60:.1f} min** wall, the process start and imports included{peak}.", "",
          "| step | estimate s | took s | note |", "|---|---|---|---|"]
    for t in out["preamble"] + out["timings"]:
        note = t.get("note") or (f"reused from {t['reused_from']}" if t.get("reused_from")
                                 else f"{t.get('variants')} variant(s)")
        md.append(f"| {t['method']} | {'' if t.get('estimate_s') is None else t['estimate_s']} | "
                  f"{round(t['seconds'], 1)} | {note} |")
    md += ["", "What the user saw on stderr (each progress bar's last state) is the result's `stderr_log`, under "
           f"benchmarks/results/{a.stem}/.", "", READING if a.stem == "eval_cli" else "", ""]
    return "\n".join(md)
