"""Dataclasses read back from JSON that someone else may have written: `from_record` checks every field against
the class's annotations, so a wrong type, a missing or an unknown field is one line naming it, never a traceback.

One validator for every untrusted record (the manifest and its parts, build and backbone configs, probe records,
stored results): nested dataclasses, `tuple[X, ...]` (a JSON list), `Literal[...]`, `X | None`, and a field's own
check (`field(metadata={"check": fn})`, `fn(value)` → why it is wrong, or None; `metadata={"required": True}`:
present even though it has a default). A class may turn its JSON layout into its fields first with a classmethod
`prepare_record(d, fail)` (`fail(key, why)` is the error to raise). The messages read
`[manifest FILE: ]field WHERE.KEY must be str/null, not int 3`."""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import MISSING, fields

from embedsearch.core.errors import IndexStateError

# Columns embedsearch computes (duplicates, leaks, label-issues, outliers, map) are named with this prefix, and no
# source column may start with it (any case: DuckDB's names are case-insensitive), so a computed column never
# replaces a source's own and `--where "coalesce(insight_dup_rank, 0) = 0"` means the same on every index. Sources
# refuse such a column (webdataset JSON fields become json_NAME); the catalog checks again.
COMPUTED_PREFIX = "insight_"


def _options(annotation) -> list:
    """The alternatives of a union annotation (`str | None` → [str, None]); one element otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [t for a in typing.get_args(annotation) for t in _options(a)]
    return [None if annotation is type(None) else annotation]


def _json_name(t) -> str:
    if t is None:
        return "null"
    if dataclasses.is_dataclass(t) or t is dict or typing.get_origin(t) is dict:
        return "dict"
    if typing.get_origin(t) in (tuple, list) or t in (tuple, list):
        return "list"
    if typing.get_origin(t) is typing.Literal:
        return "/".join(json.dumps(a) for a in typing.get_args(t))
    return getattr(t, "__name__", str(t))


def _matches(t, v) -> bool:
    """Whether JSON value `v` is of annotated type `t` (the outer type: a list's items are checked apart)."""
    if t is None:
        return v is None
    if t is typing.Any:
        return True
    if typing.get_origin(t) is typing.Literal:
        return any(v == a and type(v) is type(a) for a in typing.get_args(t))
    if isinstance(v, bool):
        return t is bool
    if t is float:
        return isinstance(v, (int, float))  # JSON writes 1.0 as 1
    if dataclasses.is_dataclass(t):
        return isinstance(v, dict)
    origin = typing.get_origin(t)
    if origin is tuple or t is tuple:
        return isinstance(v, (list, tuple))
    return isinstance(v, origin or t)


class _Reader:
    """The error grammar of one record: `[manifest SOURCE: ]field NAME why`."""

    def __init__(self, error: type[Exception], source, what: str = "manifest"):
        self.error, self.prefix = error, (f"{what} {source}: " if source is not None else "")

    def fail(self, name: str, why: str) -> Exception:
        return self.error(f"{self.prefix}field {name} {why}")

    def value(self, t, v, name: str):
        """`v` checked (and converted: a nested dataclass built, a list made a tuple) against annotation `t`."""
        opts = _options(t)
        hit = next((o for o in opts if _matches(o, v)), MISSING)
        if hit is MISSING:
            if any(typing.get_origin(o) is typing.Literal for o in opts) and not isinstance(v, (dict, list)):
                allowed = ", ".join(str(a) for o in opts for a in (typing.get_args(o) or (None,)))
                raise self.fail(name, f"must be one of {allowed} (got {json.dumps(v, default=str)[:60]})")
            names = "/".join(dict.fromkeys(_json_name(o) for o in opts))
            raise self.fail(name, f"must be {names}, not {type(v).__name__} {json.dumps(v, default=str)[:60]}")
        if v is None:
            return None
        if dataclasses.is_dataclass(hit):
            return self.record(hit, v, name)
        if typing.get_origin(hit) is tuple:
            args = typing.get_args(hit)
            item = args[0] if len(args) == 2 and args[1] is Ellipsis else typing.Any
            return tuple(self.value(item, x, f"{name}[{i}]") for i, x in enumerate(v))
        return v

    def record(self, cls, d, where: str):
        if not isinstance(d, dict):
            raise self.error(f"{self.prefix}{where or 'the top level'} is not an object")
        prepare = getattr(cls, "prepare_record", None)
        if prepare is not None:  # the class's JSON layout → its fields (what it keeps as written, what it derives)
            d = prepare(d, lambda key, why: self.fail(f"{where}.{key}" if where else key, why))
        hints = type_hints(cls)
        out = {}
        known = {f.name: f for f in fields(cls) if f.init}
        for k in d:
            if k not in known:
                raise self.error(f"{self.prefix}{where or 'the top level'} has unknown field {k!r}")
        for k, f in known.items():
            name = f"{where}.{k}" if where else k
            if k not in d:
                if (f.default is MISSING and f.default_factory is MISSING) or f.metadata.get("required"):
                    raise self.fail(name, "is missing")
                continue
            v = self.value(hints[k], d[k], name)
            check = f.metadata.get("check")
            if check is not None and v is not None:
                why = check(v)
                if why:
                    raise self.fail(name, why)
            out[k] = v
        return cls(**out)


@functools.cache
def type_hints(cls) -> dict:
    """A dataclass's resolved annotations, once per class: a manifest has one record per part (489 at 1M items),
    and resolving them each time took ~55 ms of every open there."""
    return typing.get_type_hints(cls)


def from_record(cls, d, where: str, error: type[Exception] = IndexStateError, source=None, what: str = "manifest"):
    """`cls(**d)` for a dataclass `cls`, once every key of `d` is a field of it with a value of the annotated type
    (nested dataclasses and `tuple[X, ...]` are read the same way, item by item), every field without a default is
    there and every field's `metadata["check"]` passes. `where`: the record's name in messages (`parts[3]`);
    `source`: the file, for messages that start `manifest FILE:` (`what`: another kind of file)."""
    return _Reader(error, source, what).record(cls, d, where)
