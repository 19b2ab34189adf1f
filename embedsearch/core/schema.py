"""Dataclasses read back from JSON that someone else may have written: `from_record` checks every field against
the class's annotations, so a wrong type or an unknown field is one line naming it, never a traceback."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields

from embedsearch.core.errors import IndexStateError

# Columns embedsearch computes (duplicates, leaks, label-issues, outliers, map) are named with this prefix, and no
# source column may start with it (any case: DuckDB's names are case-insensitive), so a computed column never
# replaces a source's own and `--where "coalesce(insight_dup_rank, 0) = 0"` means the same on every index. Sources
# refuse such a column (webdataset JSON fields become json_NAME); the catalog checks again.
COMPUTED_PREFIX = "insight_"


def _allowed(annotation) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for a in typing.get_args(annotation) for t in _allowed(a))
    if annotation is float:
        return (int, float)  # JSON writes 1.0 as 1
    origin = typing.get_origin(annotation)
    return (origin or annotation,)


def from_record(cls, d, where: str, error: type[Exception] = IndexStateError):
    """`cls(**d)` for a dataclass `cls`, once every key of `d` is a field of it with a value of the annotated type."""
    if not isinstance(d, dict):
        raise error(f"{where} is not an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for k, v in d.items():
        if k not in names:
            raise error(f"{where} has unknown field {k!r}")
        allowed = _allowed(hints[k])
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            raise error(f"{where}.{k} has the wrong type ({type(v).__name__} {json.dumps(v, default=str)[:60]})")
    return cls(**d)
