"""Sources → records: folders, manifests and built-in datasets become a list of Records with stable int64 ids."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import re
import stat
from collections import Counter
from pathlib import Path

import numpy as np

from embedsearch.core.errors import SourceError
from embedsearch.core.schema import COMPUTED_PREFIX
from embedsearch.sources.base import CATALOG_COLUMNS, IMAGE_EXTENSIONS, SPLIT_DIRS, Record, Source, path_id
from embedsearch.sources.base import SourceOptions as SourceOptions  # re-exported
from embedsearch.sources.hf_dataset import read_hf_dataset
from embedsearch.sources.specs import SourceSpec, parse_source
from embedsearch.sources.webdataset import read_shards

log = logging.getLogger(__name__)

DIGITS_TEST_FRACTION, DIGITS_SEED = 0.25, 0


def open_source(
    spec: str,
    *,
    root: str | None = None,
    label_regex: str | None = None,
    split: str | None = None,
    seed: int = 0,
    min_per_class: int = 0,
    require_paths: bool = True,
) -> Source:
    """Read a source spec into records; apply `--split test=0.1` and `--min-per-class` when asked.

    >>> src = open_source("digits"); len(src.records), src.classes[:3]
    (1797, ['0', '1', '2'])
    """
    s = parse_source(spec)
    src = _READERS[s.kind](s, root=root, label_regex=label_regex, require_paths=require_paths)
    src.options = {"root": root, "label_regex": label_regex, "split": split, "seed": seed,
                   "min_per_class": min_per_class, "require_paths": require_paths}
    if min_per_class:
        _drop_small_classes(src, min_per_class)
    if split:
        if any(r.split for r in src.records):
            raise SourceError(f"source {spec} already has splits; --split only applies to sources without them")
        fractions = parse_split_arg(split)
        assign_splits(src.records, fractions, seed)
        src.notes.append(f"split {split} assigned by seeded stratified sampling (seed {seed})")
    return src


def parse_split_arg(text: str) -> dict[str, float]:
    """`test=0.1` or `val=0.1,test=0.1` → fractions; the rest is train."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, frac = part.partition("=")
        try:
            f = float(frac)
        except ValueError:
            raise SourceError(f"bad --split {text!r}: expected NAME=FRACTION[,NAME=FRACTION], e.g. test=0.1") from None
        if not name.strip() or not 0 < f < 1 or name.strip() == "train":
            raise SourceError(f"bad --split part {part!r}: NAME must not be 'train' and FRACTION must be in (0, 1)")
        out[name.strip()] = f
    if sum(out.values()) >= 1:
        raise SourceError(f"bad --split {text!r}: fractions add up to {sum(out.values())}, leaving no train items")
    return out


def assign_splits(records: list[Record], fractions: dict[str, float], seed: int) -> None:
    """Seeded stratified split: within each class, round(f·n) items per named split, the rest train."""
    rng = np.random.default_rng(seed)
    by_class: dict[str | None, list[Record]] = {}
    for r in sorted(records, key=lambda r: r.id):
        by_class.setdefault(r.label, []).append(r)
    for label in sorted(by_class, key=lambda x: (x is None, x or "")):
        items = by_class[label]
        order = rng.permutation(len(items))
        start = 0
        for name, f in fractions.items():
            n = int(round(f * len(items)))
            for i in order[start : start + n]:
                items[i].split = name
            start += n
        for i in order[start:]:
            items[i].split = "train"


def _drop_small_classes(src: Source, min_per_class: int) -> None:
    counts = Counter(r.label for r in src.records if r.label is not None)
    small = sorted(c for c, n in counts.items() if n < min_per_class)
    if small:
        src.records = [r for r in src.records if r.label not in small]
        src.classes = [c for c in src.classes if c not in small]
        dropped = sum(counts[c] for c in small)
        src.notes.append(
            f"dropped {len(small)} classes with fewer than {min_per_class} items ({dropped} items): "
            + ", ".join(small[:20])
            + (" …" if len(small) > 20 else "")
        )
        log.warning(src.notes[-1])


# --------------------------------------------------------------------------------------------- built-in datasets


def _digits(s: SourceSpec, **_) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 intensities → 0..255
    recs = [Record(id=i, label=str(int(t)), array=images[i]) for i, t in enumerate(d.target)]
    assign_splits(recs, {"test": DIGITS_TEST_FRACTION}, DIGITS_SEED)
    return Source(s.raw, "digits", None, recs, [str(i) for i in range(10)],
                  [f"digits: fixed stratified split test={DIGITS_TEST_FRACTION}, seed {DIGITS_SEED}"])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SourceError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise SourceError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for sub in ("", "raw", "MNIST/raw"):
        for suffix in ("", ".gz"):
            p = directory / sub / f"{stem}{suffix}"
            if p.is_file():
                return p
    raise SourceError(f"mnist: {stem}[.gz] not found in {directory} (nor its raw/ or MNIST/raw/ folders)")


def _mnist(s: SourceSpec, **_) -> Source:
    d = Path(s.location)
    if not d.is_dir():
        raise SourceError(f"mnist: {d} is not a directory")
    recs, offset = [], 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find(d, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(d, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise SourceError(f"mnist {split}: {len(images)} images but {len(labels)} labels")
        recs += [Record(id=offset + i, label=str(int(t)), split=split, array=images[i]) for i, t in enumerate(labels)]
        offset += len(images)
    return Source(s.raw, "mnist", d, recs, [str(i) for i in range(10)])


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"CIFAR batch {path} not found")

    class _Restricted(pickle.Unpickler):  # the CIFAR batches are plain dicts of arrays; refuse anything else
        def find_class(self, module, name):
            if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") and name in (
                "_reconstruct", "ndarray", "dtype", "scalar"):
                return getattr(__import__(module, fromlist=[name]), name)
            raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{name}")

    with open(path, "rb") as f:
        return _Restricted(f, encoding="bytes").load()


def _cifar(s: SourceSpec, **_) -> Source:
    base = Path(s.location)
    fine = s.kind == "cifar100"
    sub = "cifar-100-python" if fine else "cifar-10-batches-py"
    d = base / sub if (base / sub).is_dir() else base
    meta = _unpickle(d / ("meta" if fine else "batches.meta"))
    names = [n.decode() for n in meta[b"fine_label_names" if fine else b"label_names"]]
    files = [("train", ["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)]),
             ("test", ["test"] if fine else ["test_batch"])]
    recs, offset = [], 0
    for split, batch_files in files:
        for bf in batch_files:
            b = _unpickle(d / bf)
            data = np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = b[b"fine_labels" if fine else b"labels"]
            recs += [Record(id=offset + i, label=names[t], split=split, array=data[i]) for i, t in enumerate(labels)]
            offset += len(data)
    return Source(s.raw, s.kind, d, recs, names)


# --------------------------------------------------------------------------------------------- folders and manifests


def _label_from_name(regex: re.Pattern | None, name: str) -> str | None:
    if regex is None:
        return None
    m = regex.search(name)
    if not m:
        return None
    return m.group("label") if "label" in regex.groupindex else m.group(1) if regex.groups else m.group(0)


def _compile(label_regex: str | None) -> re.Pattern | None:
    if not label_regex:
        return None
    try:
        return re.compile(label_regex)
    except re.error as e:
        raise SourceError(f"bad --label-regex {label_regex!r}: {e}") from None


def _folder(s: SourceSpec, *, label_regex=None, **_) -> Source:
    root = Path(s.location)
    regex = _compile(label_regex)
    top = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    has_splits = bool(top) and all(p.name.lower() in SPLIT_DIRS for p in top)
    recs: list[Record] = []
    unmatched, not_utf8, loops = 0, [], []
    for f in _walk(root, loops):
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = f.relative_to(root).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # a name in another encoding (Latin-1 from an old archive): no id, no catalog text
            not_utf8.append(rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
            continue
        parts = rel.split("/")
        split = SPLIT_DIRS[parts[0].lower()] if has_splits else None
        inner = parts[1:] if has_splits else parts
        if regex is not None:
            label = _label_from_name(regex, inner[-1])
            unmatched += label is None
        else:
            label = inner[0] if len(inner) > 1 else None
        recs.append(Record(id=path_id(rel), label=label, split=split, path=rel))
    if not recs:
        raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}"
                          + (f" with UTF-8 names ({len(not_utf8)} others, e.g. {not_utf8[0]})" if not_utf8 else ""))
    notes = []
    if loops:
        notes.append(f"skipped {len(loops)} symlinked folders that lead back to a folder above them (a loop), e.g. "
                     f"{loops[0]}")
        log.warning(notes[-1])
    if not_utf8:
        notes.append(f"skipped {len(not_utf8)} files whose names are not valid UTF-8 (e.g. {not_utf8[0]}): rename "
                     "them (convmv -f latin1 -t utf8) to index them")
        log.warning(notes[-1])
    if unmatched:
        log.warning("--label-regex matched no label in %d of %d file names", unmatched, len(recs))
    _check_unique_ids(recs, root)
    classes = sorted({r.label for r in recs if r.label is not None})
    return Source(s.raw, "folder", root, recs, classes, notes=notes)


def _walk(root: Path, loops: list[str]) -> list[Path]:
    """Every file below `root` whose path has no hidden part, in path order, symlinks followed: an ImageNet-style copy
    links its images, or its class folders, to shared storage. A linked folder that leads back to one of the folders
    above it (a loop) is left out and named in `loops`; a link to a file that is missing or loops is listed, and fails
    with its reason when read."""
    out: list[Path] = []

    def visit(d: Path, above: frozenset) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s (%s); its images are left out", d, e.strerror or e)
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                # follows links; the type of a plain file comes with the listing (no stat per image)
                is_dir = e.is_dir() and stat.S_ISDIR((st := os.stat(e.path)).st_mode)
            except OSError:  # a link loop: a file that fails with its reason when read
                is_dir = False
            if not is_dir:
                out.append(Path(e.path))
            elif (st.st_dev, st.st_ino) in above:
                loops.append(Path(e.path).relative_to(root).as_posix())
            else:
                visit(Path(e.path), above | {(st.st_dev, st.st_ino)})

    st = os.stat(root)
    visit(root, frozenset({(st.st_dev, st.st_ino)}))
    return out


def _check_unique_ids(recs: list[Record], where) -> None:
    seen: dict[int, Record] = {}
    for r in recs:
        if r.id in seen:
            raise SourceError(f"{where}: duplicate id {r.id} ({seen[r.id].path or ''} and {r.path or ''})")
        seen[r.id] = r


def read_manifest_table(path: Path):
    """Read a CSV/Parquet manifest as an Arrow table; CSV is read as strings (BOM, CRLF, quotes handled)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".csv":
            raw = path.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise SourceError(f"manifest {path}: line {line} is not valid UTF-8 (byte {raw[e.start]:#x})") from None
            if not raw.strip():
                raise SourceError(f"manifest {path} is empty: nothing to do")
            first = pacsv.open_csv(path).schema.names  # header only; every column is then read as text
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in first}, strings_can_be_null=True,
                null_values=[""]))  # only an empty cell is missing: a file or label named "NA" or "null" is kept
        else:
            table = pq.read_table(path)
    except SourceError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"manifest {path}: {str(e).splitlines()[0]}") from None
    return table


MANIFEST_FIELDS = ("id", "path", "label", "split")


def manifest_columns(cols: list[str], where: str) -> dict[str, str]:
    """{field: the column that holds it} for the id/path/label/split fields, matched in any case (`Label` is the
    label: the catalog's SQL does not tell `Label` from `label`, so a second column spelled so would be stored
    renamed and the items unlabelled). Two columns that SQL cannot tell apart — `label` and `Label`, `score` and
    `SCORE`, a column named like a catalog column (`Status`) — are refused with one line naming them."""
    by_name: dict[str, list[str]] = {}
    for c in cols:
        by_name.setdefault(c.lower(), []).append(c)
    for low, same in by_name.items():
        if len(same) > 1 and low in MANIFEST_FIELDS:
            raise SourceError(f"{where}: columns {same[0]!r} and {same[1]!r} both name the {low} field (column "
                              "names are not case-sensitive); rename or drop one")
        if len(same) > 1:
            raise SourceError(f"{where}: columns {same[0]!r} and {same[1]!r} differ only in case, which the "
                              "catalog's SQL cannot tell apart; rename one")
        if low in CATALOG_COLUMNS and low not in MANIFEST_FIELDS:
            raise SourceError(f"{where}: column {same[0]!r} has the name of the catalog column {low!r}; rename it")
        if low.startswith(COMPUTED_PREFIX):
            raise SourceError(f"{where}: column {same[0]!r}: names starting with {COMPUTED_PREFIX!r} are kept for "
                              "what the insight commands compute; rename it")
    return {f: by_name[f][0] for f in MANIFEST_FIELDS if f in by_name}


def _manifest(s: SourceSpec, *, root=None, label_regex=None, require_paths=True, **_) -> Source:
    path = Path(s.location)
    table = read_manifest_table(path)
    if table.num_rows == 0:
        raise SourceError(f"manifest {path} has no rows: nothing to do")
    cols = table.column_names
    field_col = manifest_columns(cols, f"manifest {path}")
    if require_paths and "path" not in field_col:
        raise SourceError(f"manifest {path} has no 'path' column (columns: {', '.join(cols)})")
    base = Path(root) if root else path.parent
    regex = _compile(label_regex)
    # rows keyed by field name (a `Label` column is the label), the other columns as they are spelled
    table = table.rename_columns([next((f for f, c in field_col.items() if c == name), name) for name in cols])
    cols = table.column_names
    data = table.to_pylist()
    extra = [c for c in cols if c not in MANIFEST_FIELDS]
    recs: list[Record] = []
    fulls: list[str | None] = []  # each record's file, absolute: decides the root
    seen_paths: dict[str, int] = {}
    first_line = 2 if path.suffix.lower() == ".csv" else 1  # CSV: line numbers after the header; Parquet: rows
    for row_index, row in enumerate(data):
        line = row_index + first_line
        where = f"manifest {path} {'line' if path.suffix.lower() == '.csv' else 'row'} {line}"
        p = row.get("path")
        if require_paths and (p is None or str(p).strip() == ""):
            raise SourceError(f"{where}: empty {field_col['path']!r}")
        p = None if p is None else str(p).strip()
        full = None
        if p is not None:
            p, full = manifest_path(p, base, where)
            if p in seen_paths:
                raise SourceError(f"{where}: duplicate path {p!r} (first on {seen_paths[p]})")
            seen_paths[p] = line
        if "id" in cols:
            try:
                rid = int(str(row["id"]).strip())
                if not 0 <= rid < 2**63:
                    raise ValueError
            except (TypeError, ValueError):
                raise SourceError(f"{where}: column {field_col['id']!r} value {row['id']!r} is not a non-negative "
                                  "int64") from None
        elif p is not None:
            # a relative path keeps the id it always had; an absolute one (or a file:// URI) is the file's own
            rid = path_id(full if os.path.isabs(p) else Path(p).as_posix())
        else:  # neither id nor path (vectors imported by row order): the row's 0-based position, never negative
            rid = row_index
        label = row.get("label")
        label = None if label is None or str(label) == "" else str(label)
        if label is None and regex is not None and p is not None:
            label = _label_from_name(regex, Path(p).name)
        split = row.get("split")
        split = None if split is None or str(split) == "" else SPLIT_DIRS.get(str(split).lower(), str(split))
        recs.append(Record(id=rid, label=label, split=split, path=p, meta={c: row[c] for c in extra}))
        fulls.append(full)
    _check_unique_ids(recs, f"manifest {path} column {field_col['id']!r}" if "id" in cols else f"manifest {path}")
    classes = sorted({r.label for r in recs if r.label is not None})
    root, notes = _manifest_root(base, recs, fulls, path)
    return Source(s.raw, "manifest", root, recs, classes, notes=notes)


def manifest_path(text: str, base: Path, where: str) -> tuple[str, str]:
    """A manifest's path cell → (the path to record, the absolute normalised path of the file). Absolute paths and
    `file://` URIs (percent-decoded) name the file itself, `~` is the user's home, anything else is relative to `base`
    (--data-root, else the manifest's folder). The list is the user's own: it may name files anywhere."""
    from urllib.parse import unquote, urlsplit

    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if m and m.group(1).lower() == "file":
        u = urlsplit(text)
        if u.netloc not in ("", "localhost"):
            raise SourceError(f"{where}: {text!r} names a file on host {u.netloc!r}; only local files "
                              "(file:///PATH) can be read")
        text = unquote(u.path)
    elif m:
        raise SourceError(f"{where}: {text!r} is a {m.group(1)}:// URL; embedsearch reads local files only "
                          "(download or mount them, then list their paths)")
    if text.startswith("~"):
        text = os.path.expanduser(text)
    full = os.path.normpath(text if os.path.isabs(text) else os.path.abspath(os.path.join(base, text)))
    return (full if os.path.isabs(text) else text), full


def _manifest_root(base: Path, recs: list[Record], fulls: list[str | None], manifest: Path
                   ) -> tuple[Path | None, list[str]]:
    """The dataset root a manifest's items are read through (and thumbnails later, within the folders this user
    indexed from): `base` when every path is relative and stays in it, as it always was; else the folder all the
    files share, the narrowest one, with every path recorded absolute, so an `--add` that widens the root leaves
    the recorded paths valid. Files with nothing in common but the filesystem root get no root at all (a root of /
    would let any index's images be served)."""
    from embedsearch.core.trust import within

    listed = [(r, f) for r, f in zip(recs, fulls) if f is not None]
    if all(not os.path.isabs(r.path) and within(f, [base]) for r, f in listed):
        return base, []
    for r, f in listed:
        r.path = f
    common = os.path.commonpath([os.path.dirname(f) for _, f in listed])
    if os.path.dirname(common) == common:  # `/` (or a drive): no folder in common
        note = (f"manifest {manifest}: its files share no folder but {common} (e.g. {listed[0][1]}); no dataset "
                "root is recorded, so reports and the server show no thumbnails of them")
        log.warning(note)
        return None, [note]
    return Path(common), []


def _webdataset(s: SourceSpec, **_) -> Source:
    root, recs, classes, notes = read_shards(s.location)
    _check_unique_ids(recs, f"shards {s.location}")
    return Source(s.raw, "webdataset", root, recs, classes, notes=notes)


def _hf_dataset(s: SourceSpec, **_) -> Source:
    root, recs, classes, notes = read_hf_dataset(s.location)
    _check_unique_ids(recs, s.raw)
    return Source(s.raw, "hf-dataset", root, recs, classes, notes=notes)


_READERS = {"digits": _digits, "mnist": _mnist, "cifar10": _cifar, "cifar100": _cifar,
            "folder": _folder, "manifest": _manifest, "webdataset": _webdataset, "hf-dataset": _hf_dataset}
