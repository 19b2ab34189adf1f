"""webdataset shards (the img2dataset / LAION layout) as a source: `KEY.jpg` with `KEY.txt`, `KEY.json`, `KEY.cls`.

An item's path is `SHARD.tar/MEMBER` (relative to the shards' common folder): a path below a regular `.tar` file
names a member of it, so thumbnails, `--originals` and contact sheets open it like any file. Listing a shard reads
its tar headers once and records each member's data offset and size, so embedding reads an image with one seek,
wherever the shard is (a Ray actor reads it on its own node). Ids are planned from shard and key.

A member that does not decode fails at embedding with its reason, like a bad file in a folder; a truncated shard
keeps the members before the cut, and the item whose data was cut fails with `TruncatedShard`; both are summarised
in the source notes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from pathlib import Path

from embedsearch.core.errors import SourceError
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


def read_member(shard: Path, member: str, offset: int | None = None, size: int | None = None) -> bytes:
    """A member's bytes: one seek with the offset the listing recorded, else a scan of the shard's headers."""
    name = f"{shard}/{member}"
    try:
        if offset is None or size is None:
            with tarfile.open(shard, "r:") as tf:
                info = tf.getmember(member)
                offset, size = info.offset_data, info.size
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except KeyError:
        raise ImageLoadError("path", "FileNotFoundError", f"no member {member} in {shard}") from None
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
    image_exts = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
    for shard in shards:
        rel = shard.resolve().relative_to(root).as_posix()
        groups: dict[str, dict] = {}
        size = shard.stat().st_size
        try:
            with tarfile.open(shard, "r:") as tf:
                for info in tf:
                    if not info.isfile():
                        continue
                    key, ext = _key_ext(info.name)
                    g = groups.setdefault(key, {})
                    if ext in image_exts and "image" not in g:
                        g["image"] = (info.name, info.offset_data, info.size)
                    elif ext in ("txt", "json", "cls") and info.offset_data + info.size <= size:
                        tf.fileobj.seek(info.offset_data)
                        g[ext] = tf.fileobj.read(info.size).decode("utf-8", "replace")
        except (tarfile.ReadError, EOFError, OSError) as e:
            if not groups:
                raise SourceError(f"shard {shard} is not a readable tar file ({e})") from None
            truncated += 1
            notes.append(f"shard {rel} is truncated after {len(groups)} keys ({e}); its complete members are kept")
            log.warning(notes[-1])
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
    if not recs:
        raise SourceError(f"no images ({', '.join(sorted(image_exts))}) in the {len(shards)} shards of {spec}")
    if no_image:
        notes.append(f"{no_image} keys have no image member and were skipped")
        log.warning(notes[-1])
    _uniform_meta(recs)
    classes = sorted({r.label for r in recs if r.label is not None})
    return root, recs, classes, notes


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
        name = f"json_{name}" if name in _RESERVED else name
        out[name] = v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)
    return out


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
