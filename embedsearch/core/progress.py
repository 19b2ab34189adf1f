"""Progress of long steps on stderr — a count, a rate and an ETA (tqdm) — silent with `embedsearch -q`.

    with progress.bar(len(grid), "linear: C sweep", unit="C") as bar:
        for C in grid:
            ...
            bar.update()
"""

from __future__ import annotations

import sys

ENABLED = True  # the CLI sets this from -q; the Python API shows progress like timm's and HF's downloads do


def bar(total: float | None, desc: str, unit: str = "it", **kw):
    """A tqdm bar on stderr (disabled when ENABLED is False): `update(n)`, `set_postfix_str(s)`, a context manager."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not ENABLED, file=sys.stderr, mininterval=0.5,
                smoothing=0.1, dynamic_ncols=True, leave=False, **kw)
