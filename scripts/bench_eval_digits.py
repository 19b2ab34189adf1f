"""Time `embedsearch eval` (every method that applies) on the embedded digits data with the pixels backbone.

Runs the real CLI in a subprocess, side by side with `embedsearch index` on the same data, and writes
scripts/bench_eval_digits.md. Target (issue 3): under 30 s on a 2-core CPU.

    python scripts/bench_eval_digits.py
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

HERE = Path(__file__).parent


def run(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "embedsearch", "-q", *args], env=env, capture_output=True, text=True,
                       check=True)
    return time.perf_counter() - t0, p.stdout


def main() -> None:
    root = Path(tempfile.mkdtemp())
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root)}
    t_index, _ = run(["index", "digits", "-b", "pixels:8", "-n", "digits-pixels"], env)
    t_eval, md = run(["eval", "digits-pixels"], env)
    shutil.rmtree(root)
    lines = ["# bench_eval_digits: `embedsearch eval` on digits, pixels backbone", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores; command: `python scripts/bench_eval_digits.py`",
             "- wall time of each CLI call in a fresh subprocess (imports included)", "",
             "| step | seconds |", "|---|---|",
             f"| `embedsearch index digits -b pixels:8` | {t_index:.1f} |",
             f"| `embedsearch eval digits-pixels` (all methods) | {t_eval:.1f} |", "",
             "The eval output of that run:", "", md]
    (HERE / "bench_eval_digits.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
