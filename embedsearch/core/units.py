"""Units in command-line values: byte sizes such as `512MiB` or `2GB`."""

from __future__ import annotations

import re

from embedsearch.core.errors import SpecError

_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9,
               "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(text: str, what: str = "--max-memory") -> int:
    """A byte count such as `512MiB`, `2GB`, `1.5G` or `1000000`."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise SpecError(f"{what} {text!r} is not a size: expected e.g. 512MiB, 2GB or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
