"""webdataset shards (the img2dataset / LAION layout) as a source: `KEY.jpg` with `KEY.txt`, `KEY.json`, `KEY.cls`.

An item's path is `SHARD.tar/MEMBER` (relative to the shards' common folder): a path below a regular `.tar` file
names a member of it, so thumbnails, `--originals` and contact sheets open it like any file. Listing a shard reads
its tar headers once and records each member's data offset and size, so embedding reads an image with one seek,
wherever the shard is (a Ray actor reads it on its own node). Ids are planned from shard and key.

A member that does not decode fails at embedding with its reason, like a bad file in a folder; a truncated shard
keeps the members before the cut, and the item whose data was cut fails with `TruncatedShard`; both are summarised
in the source notes. Members that are never read — links (never followed), devices, FIFOs, names that are not UTF-8
or leave the shard (`/…`, `..`), and every repeat of a name (the first one is the item, as in the vectors, the
thumbnails and `--originals`) — are counted by reason in the notes too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from embedsearch.core.errors import SourceError
from embedsearch.core.schema import COMPUTED_PREFIX
from embedsearch.sources.images import IMAGE_EXTENSIONS, ImageLoadError

log = logging.getLogger(__name__)

# catalog columns a JSON field must not shadow (it is stored as json_NAME instead)
_RESERVED = {"id", "path", "label", "class_index", "split", "part", "status", "stage", "error_type", "error",
             "width", "height", "caption", "shard", "key", "tar_offset", "tar_size"}


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


def _open_tar(shard: Path) -> tarfile.TarFile:
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
    st = shard.stat()
    key = (os.path.abspath(shard), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _indexes_lock:
        found = _indexes.get(key)
        if found is not None:
            _indexes.move_to_end(key)
            return found
    index: dict[str, tuple[int, int]] = {}
    with _open_tar(shard) as tf:
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


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything up to the first dot of the file name (directories included)."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower() if dot else ""


def read_shards(spec: str):
    """(root, records, classes, notes) for the shards `spec` names; records are the datasets.Record kind."""
    from embedsearch.sources.datasets import Record, path_id

    shards = [Path(p).expanduser() for p in expand_shards(spec)]
    missing = [p for p in shards if not p.is_file()]
    if missing:
        raise SourceError(f"shard {missing[0]} does not exist" + (f" (and {len(missing) - 1} more of the "
                                                                   f"{len(shards)})" if len(missing) > 1 else ""))
    if len(set(shards)) != len(shards):
        raise SourceError(f"shard pattern {spec!r} names a shard twice")
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in shards]))
    recs, notes = [], []
    no_image = truncated = 0
    skipped: list[tuple[str, str]] = []  # (reason, SHARD/MEMBER) of members never read
    image_exts = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
    for shard in shards:
        rel = shard.resolve().relative_to(root).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise SourceError(f"shard {show(str(shard))}: its name is not valid UTF-8; rename it") from None
        groups: dict[str, dict] = {}
        size = shard.stat().st_size
        members: list[tuple[str, str]] = []
        try:
            with _open_tar(shard) as tf:
                for name, info in iter_members(tf, members):
                    key, ext = _key_ext(name)
                    g = groups.setdefault(key, {})
                    if ext in image_exts:
                        if "image" in g:  # k.jpg and k.png: one vector per key, the first image's
                            members.append(("another image for the same key", show(name)))
                        else:
                            g["image"] = (name, info.offset_data, info.size)
                    elif ext in ("txt", "json", "cls") and info.offset_data + info.size <= size:
                        tf.fileobj.seek(info.offset_data)
                        g[ext] = tf.fileobj.read(info.size).decode("utf-8", "replace")
        except (tarfile.ReadError, EOFError, OSError) as e:
            if not groups:
                raise SourceError(f"shard {shard} is not a readable tar file ({e})") from None
            truncated += 1
            notes.append(f"shard {rel} is truncated after {len(groups)} keys ({e}); its complete members are kept")
            log.warning(notes[-1])
        skipped += [(why, f"{rel}/{name}") for why, name in members]
        for key, g in groups.items():
            if "image" not in g:
                no_image += 1
                continue
            member, offset, nbytes = g["image"]
            meta = {"shard": rel, "key": key, "tar_offset": offset, "tar_size": nbytes,
                    "caption": g.get("txt", "").strip() or None}
            meta.update(_json_fields(g.get("json"), f"{rel}/{key}.json"))
            label = g.get("cls", "").strip() or None
            recs.append(Record(id=path_id(f"{rel}/{key}"), label=label, path=f"{rel}/{member}", meta=meta))
    if skipped:
        notes.append(_skipped_note(skipped))
        log.warning(notes[-1])
    if not recs:
        raise SourceError(f"no images ({', '.join(sorted(image_exts))}) in the {len(shards)} shards of {spec}"
                          + (f"; {notes[-1]}" if skipped else ""))
    if no_image:
        notes.append(f"{no_image} keys have no image member and were skipped")
        log.warning(notes[-1])
    notes += _case_unique(recs)
    _uniform_meta(recs)
    classes = sorted({r.label for r in recs if r.label is not None})
    return root, recs, classes, notes


def _skipped_note(skipped: list[tuple[str, str]]) -> str:
    """One line for the members never read: a count and the first example per reason."""
    by_reason: dict[str, list[str]] = {}
    for why, where in skipped:
        by_reason.setdefault(why, []).append(where)
    parts = [f"{len(v)} {why} (e.g. {v[0]})" for why, v in by_reason.items()]
    return f"skipped {len(skipped)} shard members that are not read: " + "; ".join(parts)


def _json_fields(text: str | None, where: str) -> dict:
    """A sample's JSON: top-level scalars become catalog columns (json_NAME where a catalog column has the name),
    nested values JSON text. Bad JSON costs the fields, not the image."""
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError:
        log.warning("%s is not valid JSON; its fields are left out", where)
        return {}
    if not isinstance(obj, dict):
        return {}
    out = {}
    for k, v in obj.items():
        name = re.sub(r"\W", "_", str(k)) or "field"
        # SQL names are not case-sensitive; `insight_` is kept for computed columns (store/catalog.py)
        name = f"json_{name}" if name.lower() in _RESERVED or name.lower().startswith(COMPUTED_PREFIX) else name
        out[name] = v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)
    return out


def _case_unique(recs) -> list[str]:
    """JSON fields spelled alike but for case (`url` in some samples, `URL` in others) are one name to the catalog's
    SQL, which would store the second renamed with no word: the first spelling keeps the name, the others get
    `_2`, `_3`…, and a note says so."""
    first: dict[str, str] = {}
    renames: dict[str, str] = {}
    for r in recs:
        for k in r.meta:
            if k in renames or first.setdefault(k.lower(), k) == k:
                continue
            n = 2
            while f"{k}_{n}".lower() in first:
                n += 1
            renames[k] = f"{k}_{n}"
            first[renames[k].lower()] = renames[k]
    for r in recs:
        for old, new in renames.items():
            if old in r.meta:
                r.meta[new] = r.meta.pop(old)
    notes = [f"JSON field {k!r} differs from {first[k.lower()]!r} only in case, which the catalog's SQL cannot tell "
             f"apart; it is stored as {v!r}" for k, v in renames.items()]
    for n in notes:
        log.warning(n)
    return notes


def _uniform_meta(recs) -> None:
    """One type per column (the catalog is typed): a column whose values mix types is stored as text."""
    cols = {k for r in recs for k in r.meta}
    for c in cols:
        kinds = {type(r.meta.get(c)) for r in recs} - {type(None)}
        if kinds == {int, float}:
            for r in recs:
                if r.meta.get(c) is not None:
                    r.meta[c] = float(r.meta[c])
        elif len(kinds) > 1:
            for r in recs:
                v = r.meta.get(c)
                r.meta[c] = None if v is None else v if isinstance(v, str) else json.dumps(v)
    for r in recs:  # every record carries every column (missing: null)
        for c in cols:
            r.meta.setdefault(c, None)
