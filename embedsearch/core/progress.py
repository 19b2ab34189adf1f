"""Progress of long steps on stderr — a count, a rate and an ETA (tqdm) — silent with `embedsearch -q`, and the
wall time of each named step, for the time tables `eval` prints and stores.

    with progress.bar(len(grid), "linear: C sweep", unit="C") as bar:
        for C in grid:
            ...
            bar.update()
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

ENABLED = True  # the CLI sets this from -q; the Python API shows progress like timm's and HF's downloads do


def bar(total: float | None, desc: str, unit: str = "it", **kw):
    """A tqdm bar on stderr (disabled when ENABLED is False): `update(n)`, `set_postfix_str(s)`, a context manager."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not ENABLED, file=sys.stderr, mininterval=0.5,
                smoothing=0.1, dynamic_ncols=True, leave=False, **kw)


def note(message: str) -> None:
    """One line on stderr between bars (what a step decided or kept), unless quiet."""
    if ENABLED:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


class Clock:
    """Wall seconds per named step, in the order first seen: `with clock("read"): ...`; `clock.seconds` is the
    table {step: s}."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}
