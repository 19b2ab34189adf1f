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
from pathlib import Path

from embedsearch.core.errors import SourceError
from embedsearch.core.schema import COMPUTED_PREFIX
from embedsearch.sources.base import IMAGE_EXTENSIONS, Record, path_id
from embedsearch.sources.shards import expand_shards, iter_members, open_tar, show
from embedsearch.sources.shards import looks_like_shards as looks_like_shards  # re-exported
from embedsearch.sources.shards import member_split as member_split  # re-exported
from embedsearch.sources.shards import read_member as read_member  # re-exported

log = logging.getLogger(__name__)

# catalog columns a JSON field must not shadow (it is stored as json_NAME instead)
_RESERVED = {"id", "path", "label", "class_index", "split", "part", "status", "stage", "error_type", "error",
             "width", "height", "caption", "shard", "key", "tar_offset", "tar_size"}


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything up to the first dot of the file name (directories included)."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower() if dot else ""


def read_shards(spec: str):
    """(root, records, classes, notes) for the shards `spec` names; records are the base.Record kind."""
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
            with open_tar(shard) as tf:
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
