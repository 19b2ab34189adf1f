"""One way to print data for every command: a table by default, or --json / --nl / --csv (sqlite-utils style)."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math

import click


def output_options(f):
    """Add --json / --nl / --csv to a command; the command passes `fmt` on to `emit`."""

    @click.option("--json", "fmt", flag_value="json", help="Output JSON.")
    @click.option("--nl", "fmt", flag_value="nl", help="Output newline-delimited JSON, one object per row.")
    @click.option("--csv", "fmt", flag_value="csv", help="Output CSV.")
    @functools.wraps(f)
    def wrapper(*args, fmt=None, **kwargs):
        return f(*args, fmt=fmt or "table", **kwargs)

    return wrapper


def _finite(v):
    """JSON has no NaN or Infinity (`jq`, browsers and most parsers reject them): non-finite floats become null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def dumps(data, indent: int | None = None) -> str:
    """Strict JSON for every command's --json / --nl: non-finite floats as null, anything else unknown as str."""
    return json.dumps(_finite(data), indent=indent, default=str, allow_nan=False)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    return "\n".join([line.rstrip(), sep, *body])


def emit(data, fmt: str, columns: list[str] | None = None) -> None:
    """Print rows (list of dicts) or one object (dict) to stdout in the chosen format."""
    rows = data if isinstance(data, list) else None
    if fmt == "json":
        click.echo(dumps(data, indent=2))
    elif fmt == "nl":
        for r in rows if rows is not None else [data]:
            click.echo(dumps(r))
    elif fmt == "csv":
        buf = io.StringIO()
        rs = rows if rows is not None else [data]
        cols = columns or list(dict.fromkeys(k for r in rs for k in r))
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rs:
            w.writerow({k: _cell(r.get(k)) for k in cols})
        click.echo(buf.getvalue(), nl=False)
    elif rows is not None:
        click.echo(table(rows, columns))
    else:
        click.echo(table([{"key": k, "value": v} for k, v in data.items()]))


def emit_rows(rows, fmt: str, columns: list[str]) -> None:
    """Rows from an iterator: --nl and --csv print each row as it arrives (streamed), other formats collect first."""
    if fmt == "nl":
        for r in rows:
            click.echo(dumps(r))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})
            click.echo(buf.getvalue(), nl=False)
            buf.seek(0)
            buf.truncate()
        click.echo(buf.getvalue(), nl=False)
    else:
        emit(list(rows), fmt, columns)


@contextlib.contextmanager
def c_stdout_to_stderr(discard: bool = False):
    """Send what C/C++ code prints to stdout (FAISS's printf) to stderr meanwhile (or nowhere, `discard`: for a
    message known to be noise), so that stdout carries only the command's output (`--json` stays one document).
    Python's own writes to sys.stdout are not affected."""
    import ctypes
    import os
    import sys

    sys.stdout.flush()
    try:
        out = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdout (captured in a test, a notebook): nothing to do
        yield
        return
    libc = ctypes.CDLL(None)
    saved = os.dup(out)
    try:
        if discard:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, out)
            os.close(null)
        else:
            os.dup2(2, out)
        yield
    finally:
        libc.fflush(None)  # C's buffered stdout goes out now, to stderr, not later to the real stdout
        os.dup2(saved, out)
        os.close(saved)
