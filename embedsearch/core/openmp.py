"""How long OpenMP threads spin before they sleep, for the processes the CLI starts.

torch (and the MKL inside it) run their CPU threads on GNU OpenMP on Linux. At the end of every parallel operation
a thread that has finished waits for the others by spinning, 300,000 turns by default, before it sleeps. Alone on a
machine that is quickest. Beside another busy process (two evals at once on a 2-core machine, an eval beside the
server) a thread spins through its time slice while the partner it waits for has no core, and a loop of thousands of
millisecond-sized operations, the probes' L-BFGS and Adam steps, pays that at every one: a digits-sized linear probe
ran 10–100× slower than alone, an eval took 400 s instead of 10. With 1,000 turns two processes share the cores
fairly (each ~2× its time alone) at little cost alone (docs/benchmarks/threads.md).

The value is read once, when OpenMP loads, so it is set before anything imports torch; a value the user set wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

GOMP_SPINCOUNT = 1000  # turns a waiting GNU OpenMP thread spins before it sleeps (libgomp's default: 300,000)


def short_openmp_waits(environ: MutableMapping[str, str] = os.environ) -> None:
    """Let waiting OpenMP threads sleep soon (GOMP_SPINCOUNT), unless the environment already says otherwise.
    Only takes effect in a process that has not loaded OpenMP yet."""
    environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))
