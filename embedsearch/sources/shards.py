"""webdataset shards read as files: shard patterns, `SHARD.tar/MEMBER` paths, which members count, a member's bytes.

A member is read with one seek: by the offset the listing recorded, else through a per-process index of the shard's
members (its headers are read once per process, not once per image)."""

from __future__ import annotations

import re
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from embedsearch.core.errors import SourceError
from embedsearch.sources.base import ImageLoadError, file_key


def expand_shards(spec: str) -> list[str]:
    """`a.tar,b.tar` and brace patterns (`shards/{00000..00127}.tar`, `{train,val}-{0..3}.tar`), in order."""
    out: list[str] = []
    for piece in _split_top(spec):
        out.extend(_braces(piece))
    return out


def _split_top(s: str) -> list[str]:
    """Split on commas outside braces."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _braces(s: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", s)
    if not m:
        return [s]
    head, body, tail = s[:m.start()], m.group(1), s[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        a, b = r.group(1), r.group(2)
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        lo, hi = int(a), int(b)
        if hi < lo or hi - lo > 1_000_000:
            raise SourceError(f"shard pattern {s!r}: bad range {{{body}}}")
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        choices = body.split(",")
    return [x for c in choices for x in _braces(head + c + tail)]


def looks_like_shards(spec: str) -> bool:
    return all(p.endswith(".tar") for p in expand_shards(spec)) if spec.strip() else False


def member_split(path: Path) -> tuple[Path, str] | None:
    """`…/SHARD.tar/MEMBER` → (the shard file, MEMBER) when a parent is a regular .tar file; else None."""
    for parent in path.parents:
        if parent.suffix == ".tar" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def open_tar(shard: Path) -> tarfile.TarFile:
    # Names are decoded one way everywhere (listing, reading): bytes that are not UTF-8 become surrogates, which the
    # listing then skips, instead of depending on the locale of the process.
    return tarfile.open(shard, "r:", encoding="utf-8", errors="surrogateescape")


def _norm(name: str) -> str:
    """A member name as a path below the shard names it (`./a//b.jpg` → `a/b.jpg`): the lookup key of readers."""
    if "//" not in name and "/." not in f"/{name}" and not name.endswith("/"):
        return name  # the usual name, as it is: pathlib would cost a third of a 100k-member shard's scan
    return PurePosixPath(name).as_posix()


def show(name: str, limit: int = 120) -> str:
    """A member name or link target as one printable line: bytes that are not UTF-8 as \\xNN, long names cut."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _why_not_read(info: tarfile.TarInfo) -> str | None:
    """Why a member is never read as a file (None: a regular file). Links are never followed (a symlink member
    pointing at /etc/passwd must not become an item), devices and FIFOs have no data, and a sparse member's bytes
    in the shard are not its content."""
    if info.type not in _PLAIN_FILE:
        return _why_not_a_file(info)
    name = info.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # Latin-1 bytes from an old archive: no id, no catalog text
        return "name is not valid UTF-8"
    if not name or name.startswith("/") or (".." in name and ".." in name.split("/")):
        return "absolute or parent-relative name"
    return None


_PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def _why_not_a_file(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "FIFO"
    if info.issparse():
        return "sparse file"
    return f"not a regular file (type {info.type!r})"


def iter_members(tf: tarfile.TarFile, skipped: list[tuple[str, str]] | None = None):
    """(name, TarInfo) of each regular-file member of an open shard, in shard order, the first of each name only;
    the members left out are appended to `skipped` as (reason, name). Listing and readers use this one rule, so the
    member a thumbnail reads is the member the vector came from."""
    seen: set[str] = set()
    while True:
        info = tf.next()
        if info is None:
            return
        tf.members.clear()  # a 100k-member shard would otherwise keep 100k TarInfos while it is listed
        if info.isdir():
            continue
        why = _why_not_read(info)
        norm = _norm(info.name) if why is None else ""
        if norm in seen:
            # webdataset itself refuses a repeated name within a sample; the first one is what was embedded
            why = "duplicate member name"
        if why is not None:
            if skipped is not None:
                target = f" → {show(info.linkname)}" if info.issym() or info.islnk() else ""
                skipped.append((why, show(info.name) + target))
            continue
        seen.add(norm)
        yield info.name, info


# Readers without the recorded offset (thumbnails, --originals, contact sheets) look a member up here: a shard's
# headers are read once per process, not once per image (1.9 s per thumbnail on a 100k-member shard). Bounded by
# the members held over all shards (~130 bytes each); a replaced or grown shard has a new key.
_INDEX_BUDGET = 1_000_000
_indexes: OrderedDict[tuple, dict[str, tuple[int, int]]] = OrderedDict()
_indexes_lock = threading.Lock()


def member_index(shard: Path) -> dict[str, tuple[int, int]]:
    """{member name (normalised): (data offset, size)} of a shard, from this process's cache when the shard is
    unchanged. A truncated shard lists the members before the cut."""
    key = file_key(shard)
    with _indexes_lock:
        found = _indexes.get(key)
        if found is not None:
            _indexes.move_to_end(key)
            return found
    index: dict[str, tuple[int, int]] = {}
    with open_tar(shard) as tf:
        try:
            for name, info in iter_members(tf):
                index[_norm(name)] = (info.offset_data, info.size)
        except (tarfile.ReadError, EOFError):
            if not index:
                raise
    with _indexes_lock:
        _indexes[key] = index
        total = sum(len(v) for v in _indexes.values())
        while len(_indexes) > 1 and total > _INDEX_BUDGET:
            total -= len(_indexes.popitem(last=False)[1])
    return index


def read_member(shard: Path, member: str, offset: int | None = None, size: int | None = None) -> bytes:
    """A member's bytes: one seek with the offset the listing recorded, else with the shard's member index."""
    name = f"{shard}/{show(member)}"
    try:
        if offset is None or size is None:
            found = member_index(shard).get(_norm(member))
            if found is None:
                raise ImageLoadError("path", "FileNotFoundError", f"no member {show(member)} in {shard}")
            offset, size = found
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except (tarfile.TarError, EOFError) as e:
        raise ImageLoadError("read", "TruncatedShard", f"{name}: {e}") from None
    except OSError as e:
        raise ImageLoadError("path", type(e).__name__, f"{name}: {e}") from None
    if len(data) < size:
        raise ImageLoadError("read", "TruncatedShard", f"{name}: the shard ends {size - len(data)} bytes into it")
    return data
