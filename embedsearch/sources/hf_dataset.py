"""Hugging Face `datasets` datasets on disk as a source: `hf-dataset:DIR[?split=…&label=…&image=…&config=…]`.

DIR is any of the layouts the `datasets` library writes, read with pyarrow alone (no `datasets` import, offline):
- `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: `state.json` + `data-00000-of-00001.arrow`, or
  `dataset_dict.json` naming one such folder per split;
- the Hub's Parquet layout (`push_to_hub`, a `snapshot_download`, the Parquet conversion): `data/train-00000-of-00001
  .parquet`, `CONFIG/train-….parquet`, `CONFIG/train/0000.parquet`, `train.parquet`;
- the `datasets` cache of `load_dataset` (`dataset_info.json` + `NAME-train.arrow`, `NAME-train-00000-of-00002.arrow`);
- `OWNER/NAME` that is not a folder: that dataset's snapshot in the Hugging Face hub cache ($HF_HUB_CACHE, else
  $HF_HOME/hub, else ~/.cache/huggingface/hub), as `snapshot_download` or `load_dataset` left it.

The image column is the `Image` feature (else a struct of bytes and path); labels come from the `ClassLabel` feature
(its names), else a `label` column; other scalar columns become catalog columns. An item's path is
`FILE/COLUMN/ROW` below DIR: a path below a regular `.arrow`/`.parquet` file names that row's image, so embedding,
thumbnails and `--originals` read it like any file (`images.load_image`), one row group at a time, cached per process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qsl

from embedsearch.core.errors import SourceError
from embedsearch.sources.base import (
    CATALOG_COLUMNS,
    SPLIT_DIRS,
    ImageLoadError,
    Record,
    check_path,
    file_key,
    path_id,
)

log = logging.getLogger(__name__)

ROW_FILES = (".arrow", ".parquet")
OPTIONS = ("split", "label", "image", "config")
_COMPUTED_PREFIX = "insight_"  # store.catalog.COMPUTED_PREFIX: columns embedsearch computes
# split names the `datasets` library recognises in a file or folder name (its data-files patterns)
_SPLIT_WORDS = {"train", "training", "test", "testing", "eval", "evaluation", "validation", "valid", "val", "dev"}
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")


# --------------------------------------------------------------------------------------------- the spec


def parse_location(location: str) -> tuple[str, dict[str, str]]:
    """`DIR?split=test&label=fine_label` → (DIR, {option: value}); an unknown option is one line naming the valid."""
    if Path(location).expanduser().exists() or "?" not in location:
        return location, {}
    where, _, query = location.rpartition("?")
    opts: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise SourceError(f"hf-dataset:{location}: unknown option {key!r} (options: {', '.join(OPTIONS)})")
        if not value:
            raise SourceError(f"hf-dataset:{location}: option {key!r} needs a value, e.g. {key}=NAME")
        opts[key] = value
    return where, opts


def hub_cache_dirs() -> list[Path]:
    """Where `huggingface_hub` keeps downloads, in the order it looks."""
    out = []
    if os.environ.get("HF_HUB_CACHE"):
        out.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]) / "hub")
    out.append(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub")
    return out


def _from_hub_cache(name: str) -> Path | None:
    """The snapshot folder of dataset OWNER/NAME in the hub cache (the revision `main` points at, else the only one)."""
    owner, _, repo = name.partition("/")
    for cache in hub_cache_dirs():
        d = cache / f"datasets--{owner}--{repo}"
        snaps = d / "snapshots"
        if not snaps.is_dir():
            continue
        ref = d / "refs" / "main"
        if ref.is_file() and (snaps / ref.read_text().strip()).is_dir():
            return snaps / ref.read_text().strip()
        found = sorted(p for p in snaps.iterdir() if p.is_dir())
        if len(found) == 1:
            return found[0]
        if found:
            raise SourceError(f"hf-dataset:{name}: {len(found)} snapshots in {snaps} and no refs/main; name one "
                              f"as hf-dataset:{found[0]}")
    return None


# --------------------------------------------------------------------------------------------- listing


def read_hf_dataset(location: str):
    """(root, records, classes, notes) of the dataset `location` names; records are the base.Record kind."""
    where, opts = parse_location(location)
    root = Path(where).expanduser()
    if not root.is_dir():
        hub = _from_hub_cache(where) if re.fullmatch(r"[\w.-]+/[\w.-]+", where) and not root.exists() else None
        if hub is None:
            raise SourceError(f"hf-dataset:{where} is not a directory" + (
                " (nor a dataset OWNER/NAME in the Hugging Face hub cache at "
                f"{', '.join(map(str, hub_cache_dirs()))})" if re.fullmatch(r"[\w.-]+/[\w.-]+", where) else ""))
        root = hub
    label = f"hf-dataset:{where}"
    splits = _layout(root, label, opts.get("config"))  # {split name: [files]} in the dataset's order
    notes: list[str] = []
    wanted = opts.get("split")
    if wanted:
        names = [s for s in re.split(r"[+, ]", wanted) if s]  # `+` reaches here as a space (query syntax)
        by_norm = {SPLIT_DIRS.get(s.lower(), s): s for s in splits if s is not None}
        pick = []
        for n in names:
            got = n if n in splits else by_norm.get(SPLIT_DIRS.get(n.lower(), n))
            if got is None:
                have = ", ".join(str(s) for s in splits) if any(s is not None for s in splits) else "none: the " \
                    "dataset has no splits"
                raise SourceError(f"{label}: no split {n!r} (splits: {have})")
            pick.append(got)
        splits = {s: splits[s] for s in dict.fromkeys(pick)}
    records, classes = [], {}
    image_col = label_col = None
    card = card_features(root, opts.get("config"))
    for split, files in splits.items():
        for f in files:
            recs, image_col, label_col, names = _read_file(f, root, split, label, opts, image_col, label_col, notes,
                                                           card)
            records += recs
            for n in names:
                classes.setdefault(n, None)
    if not records:
        raise SourceError(f"{label} has no rows" + (f" in split {wanted!r}" if wanted else ""))
    if label_col is None and opts.get("label") != "none":
        notes.append(f"{label}: no label column (a ClassLabel feature or a `label` column): the items are "
                     "unlabelled; name one with ?label=COLUMN")
    present = {r.label for r in records if r.label is not None}
    ordered = [c for c in classes if c in present] + sorted(present - set(classes))
    for n in notes:
        log.warning(n)
    return root, records, ordered, list(dict.fromkeys(notes))


def _files(root: Path, suffix: str, depth: int = 3) -> list[Path]:
    """Files with this suffix at most `depth` levels below root (CONFIG/SPLIT/0000.parquet is the deepest layout:
    a folder of many datasets is not walked whole), hidden parts (.cache, .git) left out, in name order. Linked files
    count (a hub-cache snapshot is links to its blobs)."""
    out = []
    for d, dirs, files in os.walk(root, followlinks=False):
        level = len(Path(d).relative_to(root).parts)
        dirs[:] = sorted(x for x in dirs if not x.startswith(".")) if level + 1 < depth else []
        out += [Path(d) / f for f in files if f.endswith(suffix) and not f.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _split_order(split: str | None) -> tuple[int, str]:
    """train, then validation, then test, then the others by name: the order people list them in."""
    rank = {"train": 0, "training": 0, "validation": 1, "valid": 1, "val": 1, "dev": 1, "test": 2, "testing": 2}
    return (rank.get((split or "").lower(), 3), split or "")


def _layout(root: Path, label: str, config: str | None) -> dict[str | None, list[Path]]:
    """{split: files} for the layouts the module docstring lists."""
    if (root / "dataset_dict.json").is_file():
        try:
            names = json.loads((root / "dataset_dict.json").read_text())["splits"]
        except (ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{label}: dataset_dict.json is not a DatasetDict's ({e})") from None
        return {n: _saved_files(root / n, f"{label}/{n}") for n in names}
    if (root / "state.json").is_file():
        state = _json(root / "state.json", label)
        return {state.get("_split"): _saved_files(root, label)}
    parquet = _files(root, ".parquet")
    splits = _hub_splits(root, parquet, label, config) if parquet else None
    if splits:
        return splits
    arrow = _files(root, ".arrow")
    if arrow and (root / "dataset_info.json").is_file():
        return _cache_splits(root, arrow, label)
    have = sorted(p.name for p in root.iterdir())[:8]
    raise SourceError(f"{label}: no dataset here — expected dataset_dict.json or state.json (save_to_disk), Parquet "
                      "files (data/train-00000-of-00001.parquet) or the datasets cache (dataset_info.json + "
                      f"NAME-train.arrow); it holds: {', '.join(have) or 'nothing'}")


def _json(path: Path, label: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{label}: {path.name} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{label}: {path.name} is not a JSON object")
    return data


def _saved_files(d: Path, label: str) -> list[Path]:
    """The Arrow files of one `save_to_disk` Dataset folder, in its own order (state.json)."""
    if not (d / "state.json").is_file():
        raise SourceError(f"{label}: {d} has no state.json (not a folder written by Dataset.save_to_disk)")
    files = [d / f["filename"] for f in _json(d / "state.json", label).get("_data_files", []) if "filename" in f]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise SourceError(f"{label}: {missing[0] if missing else d}: " + (
            "state.json names it but it is missing" if missing else "state.json names no data files"))
    return files


def _hub_splits(root: Path, files: list[Path], label: str, config: str | None) -> dict[str | None, list[Path]]:
    """Split (and config) of each Parquet file from its name, the way the Hub names them."""
    by_config: dict[str, dict[str | None, list[Path]]] = {}
    for f in files:
        *dirs, name = f.relative_to(root).parts
        if "data" in dirs[1:]:  # X/data/train-….parquet: another dataset's folder inside this one, not a config
            continue
        stem = name[: -len(".parquet")]
        m = _SHARD.match(stem)
        if m:  # data/train-00000-of-00001.parquet, CONFIG/train-00000-of-00003.parquet
            split, cfg = m.group("split"), dirs
        elif dirs and (dirs[-1].removeprefix("partial-") in _SPLIT_WORDS or dirs[:-1] == ["data"]
                       or stem.isdigit()):  # CONFIG/train/0000.parquet (the Parquet conversion), data/train/x
            split, cfg = dirs[-1].removeprefix("partial-"), dirs[:-1]
        else:  # train.parquet, data/test-clean.parquet, or no split at all
            word = re.split(r"[-_.]", stem)[0]
            split, cfg = (word if word.lower() in _SPLIT_WORDS else None), dirs
        cfg_name = "/".join(p for p in cfg if p != "data") or "default"
        by_config.setdefault(cfg_name, {}).setdefault(split, []).append(f)
    if config is not None:
        if config not in by_config:
            raise SourceError(f"{label}: no config {config!r} (configs: {', '.join(sorted(by_config))})")
        by_config = {config: by_config[config]}
    if not by_config:
        return {}
    if len(by_config) > 1:
        raise SourceError(f"{label} has {len(by_config)} configs ({', '.join(sorted(by_config))}): pick one with "
                          f"?config=NAME")
    found = next(iter(by_config.values()))
    return {s: found[s] for s in sorted(found, key=_split_order)}


def _cache_splits(root: Path, files: list[Path], label: str) -> dict[str | None, list[Path]]:
    """The `datasets` cache: NAME-SPLIT.arrow or NAME-SPLIT-00000-of-00002.arrow, splits from dataset_info.json."""
    info = _json(root / "dataset_info.json", label)
    names = list(info.get("splits") or {})
    out: dict[str | None, list[Path]] = {}
    for s in sorted(names, key=len, reverse=True):  # `test` must not take the files of `test-other`
        for f in files:
            stem = f.name[: -len(".arrow")]
            if (stem.endswith(f"-{s}") or re.search(rf"-{re.escape(s)}-\d{{5}}-of-\d{{5}}$", stem)) and \
                    not any(f in v for v in out.values()):
                out.setdefault(s, []).append(f)
    if not out:
        raise SourceError(f"{label}: no Arrow file is named for a split of dataset_info.json ({', '.join(names)}); "
                          f"files: {', '.join(f.name for f in files[:5])}")
    return {s: out[s] for s in names if s in out}


def _features(schema, f: Path, card: dict) -> dict:
    """The `datasets` features of a file: its schema metadata, else the dataset_info.json beside it, else the
    dataset card's (README.md) — Parquet files uploaded without the `datasets` library carry none of their own."""
    meta = schema.metadata or {}
    if b"huggingface" in meta:
        try:
            return json.loads(meta[b"huggingface"]).get("info", {}).get("features") or {}
        except (ValueError, AttributeError):
            pass
    info = f.parent / "dataset_info.json"
    if info.is_file():
        try:
            return json.loads(info.read_text()).get("features") or {}
        except (OSError, ValueError, AttributeError):
            pass
    return card


def card_features(root: Path, config: str | None) -> dict:
    """Features from the YAML header of a Hub dataset card (README.md: `dataset_info.features`, a list of
    {name, dtype}), in the form `datasets` stores them: `image` → Image, `class_label` → ClassLabel with its names."""
    readme = root / "README.md"
    if not readme.is_file():
        return {}
    try:
        import yaml

        text = readme.read_text(encoding="utf-8")
        if not text.startswith("---"):
            return {}
        info = (yaml.safe_load(text.split("---", 2)[1]) or {}).get("dataset_info")
    except Exception as e:  # noqa: BLE001 — a card we cannot read costs the class names, not the dataset
        log.warning("%s: its YAML header cannot be read (%s)", readme, e)
        return {}
    if isinstance(info, list):  # one entry per config
        info = next((i for i in info if isinstance(i, dict) and i.get("config_name") == (config or "default")),
                    info[0] if info else None)
    out = {}
    features = info.get("features") if isinstance(info, dict) else None
    for f in features if isinstance(features, list) else []:
        if not isinstance(f, dict) or "name" not in f:
            continue
        dtype = f.get("dtype")
        if dtype == "image":
            out[f["name"]] = {"_type": "Image"}
        elif isinstance(dtype, dict) and isinstance(dtype.get("class_label"), dict):
            names = dtype["class_label"].get("names") or {}
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names, key=lambda k: int(k))]
            out[f["name"]] = {"_type": "ClassLabel", "names": [str(n) for n in names]}
    return out


def _is_image_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(t):
        names = {t.field(i).name for i in range(t.num_fields)}
        return "bytes" in names
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _columns_line(schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)[:400]


def _pick_image(schema, features: dict, label: str, asked: str | None) -> str:
    cols = schema.names
    if asked:
        if asked not in cols:
            raise SourceError(f"{label}: no column {asked!r} for ?image= (columns: {_columns_line(schema)})")
        if not _is_image_type(schema.field(asked).type):
            raise SourceError(f"{label}: column {asked!r} is {schema.field(asked).type}, not an image (an Image "
                              "feature: a struct of bytes and path)")
        return asked
    images = [c for c in cols if (features.get(c) or {}).get("_type") == "Image" and
              _is_image_type(schema.field(c).type)]
    images = images or [c for c in cols if _is_image_type(schema.field(c).type)]
    if not images:
        raise SourceError(f"{label}: no image column (an Image feature, or a struct of bytes and path); columns: "
                          f"{_columns_line(schema)}")
    return "image" if "image" in images else images[0]


def _pick_label(schema, features: dict, label: str, asked: str | None) -> str | None:
    import pyarrow as pa

    cols = schema.names
    if asked == "none":
        return None
    if asked:
        if asked not in cols:
            raise SourceError(f"{label}: no label column {asked!r} (columns: {_columns_line(schema)})")
        col = asked
    else:
        class_labels = [c for c in cols if (features.get(c) or {}).get("_type") == "ClassLabel"]
        named = [c for c in cols if c.lower() in ("label", "labels")]
        col = ("label" if "label" in class_labels else class_labels[0]) if class_labels else \
            (named[0] if named else None)
        if col is None:
            return None
    t = schema.field(col).type
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_dictionary(t)):
        raise SourceError(f"{label}: label column {col!r} is {t}, not a class (a ClassLabel, an integer or a "
                          "string; lists of labels are not supported): name another with ?label=COLUMN, or "
                          "?label=none")
    return col


def _scalar(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t))


def _read_file(f: Path, root: Path, split: str | None, label: str, opts: dict, image_col, label_col, notes,
               card: dict):
    """The records of one Arrow/Parquet file; the image and label columns are chosen on the first file and must be
    the same in the others (one dataset, one schema)."""
    rel = f.relative_to(root).as_posix()
    where = f"{label} ({rel})"
    table = _open_table(f, where)
    schema = table.schema
    features = _features(schema, f, card)
    if image_col is None:
        image_col = _pick_image(schema, features, label, opts.get("image"))
        label_col = _pick_label(schema, features, label, opts.get("label"))
        others = [c for c in schema.names if (features.get(c) or {}).get("_type") in ("Image", "ClassLabel")
                  and c not in (image_col, label_col)]
        if others and not (opts.get("image") or opts.get("label")):
            notes.append(f"{label}: images from column {image_col!r}, labels from "
                         f"{label_col!r}; also there: {', '.join(others)} (pick with ?image= / ?label=)")
    elif image_col not in schema.names or (label_col is not None and label_col not in schema.names):
        raise SourceError(f"{where}: has no column {image_col if image_col not in schema.names else label_col!r} "
                          f"that the other files have (columns: {_columns_line(schema)})")
    if "/" in image_col:
        raise SourceError(f"{where}: image column {image_col!r} has a '/' in its name; rename it")
    names: list[str] = []
    labels: list[str | None] = [None] * table.num_rows
    if label_col is not None:
        feat = features.get(label_col) or {}
        raw = table.column(label_col).to_pylist()
        if feat.get("_type") == "ClassLabel" and feat.get("names"):
            names = [str(n) for n in feat["names"]]
            bad = next((v for v in raw if v is not None and not (-1 <= int(v) < len(names))), None)
            if bad is not None:
                raise SourceError(f"{where}: label {bad} in column {label_col!r} is not one of its {len(names)} "
                                  "ClassLabel names")
            labels = [None if v is None or int(v) < 0 else names[int(v)] for v in raw]  # -1: no label (HF)
        else:
            labels = [None if v is None or v == "" else str(v) for v in raw]
    meta_cols = [c for c in schema.names if c not in (image_col, label_col) and _scalar(schema.field(c).type)]
    skipped = [c for c in schema.names if c not in (image_col, label_col) and c not in meta_cols]
    if skipped:
        notes.append(f"{label}: columns not kept in the catalog (not scalars): {', '.join(skipped)}")
    meta, taken = {}, set()
    for c in meta_cols:  # `url` and `URL` are one name to the catalog's SQL: the second becomes URL_2
        name, n = _meta_name(c), 2
        while name.lower() in taken:
            name, n = f"{_meta_name(c)}_{n}", n + 1
        taken.add(name.lower())
        meta[name] = table.column(c).to_pylist()
    out_split = None if split is None else SPLIT_DIRS.get(split.lower(), split)
    recs = []
    for i in range(table.num_rows):
        path = f"{rel}/{image_col}/{i}"
        recs.append(Record(id=path_id(path), label=labels[i], split=out_split, path=path,
                           meta={k: v[i] for k, v in meta.items()}))
    return recs, image_col, label_col, names


def _meta_name(column: str) -> str:
    """A dataset column as a catalog column: its own name, or hf_NAME where that is a catalog column's (SQL names
    are not case-sensitive) or the prefix of the columns embedsearch computes."""
    low = column.lower()
    return f"hf_{column}" if low in CATALOG_COLUMNS or low.startswith(_COMPUTED_PREFIX) else column


# --------------------------------------------------------------------------------------------- reading one row


def row_split(path: Path) -> tuple[Path, str, int] | None:
    """`…/FILE.arrow/COLUMN/ROW` → (the data file, COLUMN, ROW) when FILE is a regular .arrow/.parquet file."""
    col, file = path.parent, path.parent.parent
    if not path.name.isdigit() or file.suffix not in ROW_FILES or not file.is_file():
        return None
    return file, col.name, int(path.name)


class _Open:
    """One data file opened for random access to rows: an Arrow file memory-mapped whole (only the pages read are
    touched), a Parquet file by row group (decoded groups are cached, `_GROUP_BUDGET` bytes over all files)."""

    def __init__(self, path: Path):
        import bisect

        self.path, self.bisect = path, bisect.bisect_right
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self.pf = pq.ParquetFile(path, memory_map=True)
            md = self.pf.metadata
            self.starts = [0]
            for g in range(md.num_row_groups):
                self.starts.append(self.starts[-1] + md.row_group(g).num_rows)
            self.table = None
        else:
            self.pf, self.table = None, _read_arrow(path)
            self.chunks: dict[str, tuple[list, list[int]]] = {}

    def cell(self, column: str, row: int):
        if self.pf is not None:
            if not 0 <= row < self.starts[-1]:
                raise IndexError(row)
            g = self.bisect(self.starts, row) - 1
            arr = _row_group(self, g, column)
            return arr[row - self.starts[g]].as_py()
        if column not in self.chunks:
            col = self.table.column(column)
            starts = [0]
            for c in col.chunks:
                starts.append(starts[-1] + len(c))
            self.chunks[column] = (col.chunks, starts)
        chunks, starts = self.chunks[column]
        if not 0 <= row < starts[-1]:
            raise IndexError(row)
        k = self.bisect(starts, row) - 1
        return chunks[k][row - starts[k]].as_py()


_OPEN_FILES = 64
_GROUP_BUDGET = 256 << 20
_files_open: OrderedDict[tuple, _Open] = OrderedDict()
_groups: OrderedDict[tuple, object] = OrderedDict()
_lock = threading.Lock()


def _row_group(f: _Open, g: int, column: str):
    key = (id(f), g, column)
    with _lock:
        found = _groups.get(key)
        if found is not None:
            _groups.move_to_end(key)
            return found
    arr = f.pf.read_row_group(g, columns=[column]).column(0).combine_chunks()
    with _lock:
        _groups[key] = arr
        total = sum(a.nbytes for a in _groups.values())
        while len(_groups) > 1 and total > _GROUP_BUDGET:
            total -= _groups.popitem(last=False)[1].nbytes
    return arr


def _read_arrow(path: Path):
    """An Arrow IPC file as a table over a memory map: the stream format `datasets` writes, or the file format."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    head = source.read(6)
    source.seek(0)
    reader = pa.ipc.open_file(source) if head == b"ARROW1" else pa.ipc.open_stream(source)
    return reader.read_all()


def _open_table(f: Path, where: str):
    """A whole file as an Arrow table for listing: Arrow memory-mapped, Parquet without its image bytes read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if f.suffix == ".parquet":
            schema = pq.read_schema(f)
            keep = [n for n in schema.names if not _is_image_type(schema.field(n).type)]
            # a table that has the schema (with its metadata) but reads no image bytes
            t = pq.read_table(f, columns=keep) if keep else None
            rows = pq.ParquetFile(f).metadata.num_rows
            arrays = [t.column(n) if t is not None and n in keep else pa.nulls(rows, schema.field(n).type)
                      for n in schema.names]
            return pa.Table.from_arrays(arrays, schema=schema)
        return _read_arrow(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{where}: not a readable {f.suffix[1:]} file ({str(e).splitlines()[0]})") from None


def _opened(file: Path) -> _Open:
    key = file_key(file)
    with _lock:
        found = _files_open.get(key)
        if found is not None:
            _files_open.move_to_end(key)
            return found
    opened = _Open(file)
    with _lock:
        _files_open[key] = opened
        while len(_files_open) > _OPEN_FILES:
            old = _files_open.popitem(last=False)[1]
            for k in [k for k in _groups if k[0] == id(old)]:
                del _groups[k]
    return opened


def read_row_image(file: Path, column: str, row: int) -> bytes:
    """The encoded image of one row: its bytes, or the file its `path` names (absolute, or relative to the data
    file's folder) when the dataset stored only the path."""
    import pyarrow as pa

    name = f"{file}/{column}/{row}"
    try:
        value = _opened(file).cell(column, row)
    except KeyError:
        raise ImageLoadError("read", "NoSuchColumn", f"{name}: {file.name} has no column {column!r}") from None
    except IndexError:
        raise ImageLoadError("read", "NoSuchRow", f"{name}: {file.name} has no row {row}") from None
    except (pa.ArrowException, OSError) as e:
        raise ImageLoadError("read", "BadDataFile", f"{name}: {str(e).splitlines()[0]}") from None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes") is not None:
        return bytes(value["bytes"])
    if isinstance(value, dict) and value.get("path"):
        p = Path(value["path"])
        p = p if p.is_absolute() else file.parent / p
        check_path(p, None)
        try:
            return p.read_bytes()
        except OSError as e:
            raise ImageLoadError("path", type(e).__name__, f"{name}: {p}: {e.strerror or e}") from None
    raise ImageLoadError("read", "NoImage", f"{name}: the row has no image (neither bytes nor a path)")
