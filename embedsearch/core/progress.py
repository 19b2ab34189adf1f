"""Progress of long steps on stderr — a count, a rate and an ETA (tqdm) — silent with `embedsearch -q`.

    with progress.bar(len(grid), "linear: C sweep", unit="C") as bar:
        for C in grid:
            ...
            bar.update()
"""

from __future__ import annotations

import sys

ENABLED = True  # the CLI sets this from -q; the Python API shows progress like timm's and HF's downloads do

# The signals the CLI's handlers recorded (SIGINT, SIGTERM), first one first. A handler raises at once; but a signal
# that lands inside an import can be turned into an ImportError by a C extension and swallowed by an optional-import
# guard, and the run would go on. Long loops call `check_interrupt()` once per step, which raises it again.
INTERRUPTS: list[int] = []


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if the CLI recorded a SIGINT/SIGTERM that did not stop the run (see INTERRUPTS)."""
    if INTERRUPTS:
        raise KeyboardInterrupt


def bar(total: float | None, desc: str, unit: str = "it", **kw):
    """A tqdm bar on stderr (disabled when ENABLED is False): `update(n)`, `set_postfix_str(s)`, a context manager."""
    return _bar_class()(total=total, desc=desc, unit=unit, disable=not ENABLED, file=sys.stderr, mininterval=0.5,
                        smoothing=0.1, dynamic_ncols=True, leave=False, **kw)


def _bar_class():
    """tqdm whose `update` first calls `check_interrupt` (made once, on first use: tqdm loads lazily)."""
    global _BAR
    if _BAR is None:
        from tqdm import tqdm

        class Bar(tqdm):
            def update(self, n=1):
                check_interrupt()
                return super().update(n)

        _BAR = Bar
    return _BAR


_BAR = None
