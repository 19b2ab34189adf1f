"""Time `embedsearch eval` (every method that applies) on the embedded digits data with the pixels backbone.

Runs the real CLI in a subprocess, side by side with `embedsearch index` on the same data. The reading:
docs/benchmarks/eval_digits.md. Target (issue 3): under 30 s on a 2-core CPU.

    python -m benchmarks eval_digits
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK: dict = {}  # a few seconds already: --quick runs it as it is


def add_arguments(ap) -> None:
    pass


def cli(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "embedsearch", "-q", *args], env=env, capture_output=True, text=True,
                       check=True)
    return time.perf_counter() - t0, p.stdout


def run(args) -> dict:
    root = Path(tempfile.mkdtemp())
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root)}
    t_index, _ = cli(["index", "digits", "-b", "pixels:8", "-n", "digits-pixels"], env)
    t_eval, md = cli(["eval", "digits-pixels"], env)
    shutil.rmtree(root)
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": "python -m benchmarks eval_digits",
            "index_s": t_index, "eval_s": t_eval, "eval_output": md}


def render(r: dict) -> str:
    lines = ["# bench_eval_digits: `embedsearch eval` on digits, pixels backbone", "",
             f"- machine: {r['machine']}; command: `{r['command']}`",
             "- wall time of each CLI call in a fresh subprocess (imports included)", "",
             "| step | seconds |", "|---|---|",
             f"| `embedsearch index digits -b pixels:8` | {r['index_s']:.1f} |",
             f"| `embedsearch eval digits-pixels` (all methods) | {r['eval_s']:.1f} |", "",
             "The eval output of that run:", "", r["eval_output"]]
    return "\n".join(lines)
