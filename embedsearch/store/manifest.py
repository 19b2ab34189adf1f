"""The index directory: its layout, the JSON manifest that describes it, the writer lock and consistency checks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
import typing
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from embedsearch.core.errors import IndexStateError
from embedsearch.core.schema import from_record

FORMAT_VERSION = 1


def default_root() -> Path:
    """Where `NAME` indexes live: $EMBEDSEARCH_HOME (read at each call) or ./indexes."""
    return Path(os.environ.get("EMBEDSEARCH_HOME", "indexes"))


# fields of the backbone description that define the embedding space (a resume must match them all)
SPACE_FIELDS = ("spec", "kind", "model", "weights_sha256", "preprocess", "pool", "dim")
LATER_SPACE_FIELDS = ("precision", "batch_size")  # space fields added after indexes existed


@dataclass(frozen=True)
class Layout:
    dir: Path

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def parts(self) -> Path:
        return self.dir / "parts"

    @property
    def catalog(self) -> Path:
        return self.dir / "catalog.duckdb"

    @property
    def faiss(self) -> Path:
        return self.dir / "index.faiss"

    @property
    def reports(self) -> Path:
        return self.dir / "reports"

    @property
    def probes(self) -> Path:
        return self.dir / "probes"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"

    def entries(self) -> tuple[Path, ...]:
        """Everything embedsearch reads or writes in the index folder."""
        return (self.manifest, self.parts, self.catalog, self.catalog.with_name(self.catalog.name + ".wal"),
                self.faiss, self.reports, self.probes, self.lock)

    def check_confined(self) -> None:
        """An index from someone else is untrusted: none of its entries may be a symbolic link, and its folders
        must be folders, so that no write, rename or delete (repair, resume, eval) can reach a file outside it."""
        for p in (*self.entries(), *(self.dir.iterdir() if self.dir.is_dir() else ())):
            if p.is_symlink():
                raise IndexStateError(f"{p} is a symbolic link (to {os.readlink(p)}); an index's files must live "
                                      "inside its folder: replace the link with the file or folder itself")
        for p in (self.parts, self.reports, self.probes):
            if p.exists() and not p.is_dir():
                raise IndexStateError(f"{p} is not a folder")
        if self.parts.is_dir():
            for f in self.parts.iterdir():
                if f.is_symlink():
                    raise IndexStateError(f"{f} is a symbolic link (to {os.readlink(f)}); an index's files must "
                                          "live inside its folder")


def resolve(name_or_path: str | os.PathLike, root: Path | None = None) -> Layout:
    """A plain `NAME` lives under the root: `root` when given, else EMBEDSEARCH_HOME or ./indexes (a folder of that
    name holding a manifest in the working directory is used when no root is given). Anything with a `/` is a path
    to the index folder, used as is. `.`, `..` and the empty name are refused: they would put an index's files into
    an existing folder."""
    s = os.fspath(name_or_path)
    if "/" in s:
        return Layout(Path(s))
    if s in ("", ".", "..") or "\x00" in s:
        raise IndexStateError(f"{s!r} is not an index name: use a plain name such as digits-pixels, or a path to "
                              "the index folder (with a '/')")
    if root is not None:
        return Layout(Path(root) / s)
    if Path(s).is_dir() and (Path(s) / "manifest.json").exists():
        return Layout(Path(s))
    return Layout(default_root() / s)


# --------------------------------------------------------------------------------------------- the manifest

PART_FILE = re.compile(r"part-\d{5}\.parquet")
SHA256 = re.compile(r"[0-9a-f]{64}")


def _nonneg(v) -> str | None:
    return None if v >= 0 else f"must be ≥ 0 (got {v})"


def _positive(v) -> str | None:
    return None if v >= 1 else f"must be ≥ 1 (got {v})"


def _sha(v) -> str | None:
    return None if SHA256.fullmatch(v) else "is not a sha256 hex digest"


def _part_file(v) -> str | None:
    return None if PART_FILE.fullmatch(v) else "must be a part name like part-00000.parquet (no folders)"


def _unique_files(parts) -> str | None:
    names = [p.file for p in parts]
    dup = next((n for n in names if names.count(n) > 1), None)
    return None if dup is None else f"lists {dup} twice"


@dataclass(frozen=True)
class PartRecord:
    """One committed Parquet part; `file` is a bare `part-NNNNN.parquet` name, so it can only name a file in parts/."""

    file: str = field(metadata={"check": _part_file})
    rows: int = field(metadata={"check": _nonneg})
    bytes: int = field(metadata={"check": _nonneg})
    sha256: str = field(metadata={"check": _sha})

    @property
    def number(self) -> int:
        return int(self.file[5:10])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FaissRecord:
    """The FAISS file of the index (always `index.faiss` beside the manifest) and how it was built."""

    ntotal: int = field(metadata={"check": _nonneg})
    bytes: int = field(metadata={"check": _nonneg})
    sha256: str = field(metadata={"check": _sha})
    factory: str
    requested: str | None = None
    params: dict = field(default_factory=dict)
    file: str = field(default="index.faiss", metadata={"check": lambda v: None if v == "index.faiss" else
                                                       "must be index.faiss"})
    extra: dict = field(default_factory=dict)  # metric, seed, timings, auto-tuning record: kept as written

    def to_dict(self) -> dict:
        return {"file": self.file, "requested": self.requested, "factory": self.factory, "params": self.params,
                **{k: v for k, v in self.extra.items() if k not in ("ntotal", "bytes", "sha256")},
                "ntotal": self.ntotal, "bytes": self.bytes, "sha256": self.sha256}

    @property
    def lists_file(self) -> str | None:
        """The inverted-lists file beside index.faiss of an on-disk IVF index (store/ondisk.py), else None."""
        st = self.extra.get("storage") or {}
        return st.get("lists_file") if st.get("kind") == "ondisk" else None

    @classmethod
    def prepare_record(cls, d: dict, fail) -> dict:
        """What the record does not know is kept as written (`extra`), once an on-disk storage names only a lists
        file beside index.faiss; `params: null` reads as no parameters."""
        st = d.get("storage")
        if not isinstance(st, (dict, type(None))):
            raise fail("storage", f"must be dict/null, not {type(st).__name__} {json.dumps(st, default=str)[:60]}")
        if st and st.get("kind") == "ondisk":
            from embedsearch.store.ondisk import LISTS_RE

            name = st.get("lists_file")
            if not isinstance(name, str) or not LISTS_RE.match(name):
                raise fail("storage", f"lists_file {name!r} is not a lists file name (lists.NNNN.ivfdata)")
            if isinstance(st.get("lists_bytes"), bool) or not isinstance(st.get("lists_bytes"), int) \
                    or st["lists_bytes"] < 0:
                raise fail("storage", "lists_bytes must be a byte count")
        known = ("file", "requested", "factory", "params", "ntotal", "bytes", "sha256")
        return {**{k: v for k, v in d.items() if k in known and not (k == "params" and v is None)},
                "extra": {k: v for k, v in d.items() if k not in known}}

    @classmethod
    def of(cls, d: dict) -> FaissRecord:
        return from_record(cls, d, "faiss", source="(new)")


@dataclass(frozen=True)
class Space:
    """What defines the embedding space: a resume or `--add` must match every field."""

    spec: str
    kind: str
    dim: int = field(metadata={"check": _positive})
    dtype: Literal["float16", "float32"]
    model: str | None = None
    weights_sha256: str | None = None
    preprocess: dict | None = None
    pool: str | None = None
    precision: str | None = None  # the autocast precision of a network's forward (None: no network)
    # the forward's batch size: batching changes a network's float results (None: none)
    batch_size: int | None = field(default=None, metadata={"check": _positive})
    # the fields above that this manifest records: indexes built before one was recorded lack it, and are neither
    # checked against it nor given one
    recorded: tuple[str, ...] = LATER_SPACE_FIELDS

    def to_dict(self) -> dict:
        return ({k: getattr(self, k) for k in SPACE_FIELDS} | {"dtype": self.dtype}
                | {k: getattr(self, k) for k in self.recorded})

    @classmethod
    def prepare_record(cls, d: dict, fail) -> dict:
        """The recorded fields, and which of the later ones this manifest has (other keys are ignored, as they
        always were)."""
        return {**{k: d[k] for k in (*SPACE_FIELDS, "dtype", *LATER_SPACE_FIELDS) if k in d},
                "recorded": tuple(k for k in LATER_SPACE_FIELDS if k in d)}

    @classmethod
    def of(cls, backbone_desc: dict, dtype: str, precision: str | None = None, batch_size: int | None = None) -> Space:
        return from_record(cls, {**{k: backbone_desc.get(k) for k in SPACE_FIELDS}, "dtype": dtype,
                                 "precision": precision, "batch_size": batch_size}, "space", source="(new)")


@dataclass(frozen=True)
class Snapshot:
    """What readers keep serving while `index --add` extends a complete index."""

    parts: tuple[PartRecord, ...] = field(metadata={"check": _unique_files})
    faiss: FaissRecord | None = None
    counts: dict | None = None

    def to_dict(self) -> dict:
        return {"parts": [p.to_dict() for p in self.parts], "faiss": self.faiss.to_dict() if self.faiss else None,
                "counts": self.counts}


@dataclass(frozen=True)
class _SourceHead:
    """What a manifest's `source` must hold when it holds anything (the rest is the source's own record)."""

    spec: str
    options: dict | None = None


State = Literal["building", "complete", "repairing"]
STATES = typing.get_args(State)


@dataclass
class Manifest:
    """manifest.json, typed. `load` treats the file as untrusted input (an index may come from someone else): wrong
    types, missing fields, names outside the index's folders and newer format versions are one-line errors naming
    the file and field. Unknown top-level keys are kept and written back as they were."""

    name: str
    space: Space
    backbone: dict
    state: State = "building"
    parts: tuple[PartRecord, ...] = field(default=(), metadata={"check": _unique_files, "required": True})
    faiss: FaissRecord | None = None
    source: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    backbone_config: dict | None = None
    counts: dict | None = None
    snapshot: Snapshot | None = None
    versions: dict = field(default_factory=dict)
    catalog: dict = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    normalization: str = ("raw vectors stored; FAISS index and cosine methods use L2-normalized vectors")
    format_version: int = field(default=FORMAT_VERSION, metadata={"required": True})
    extra: dict = field(default_factory=dict)
    serving: str | None = None  # set on a reader's view of a snapshot; never written

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def serving_view(self) -> Manifest:
        """What readers see: the manifest when complete; while an extension runs, the last complete snapshot."""
        if self.state == "complete":
            return self
        if self.snapshot is None:
            raise IndexStateError(f"index {self.name} is not complete (state {self.state!r}): re-run the same "
                                  "`embedsearch index` command to resume it")
        return replace(self, parts=self.snapshot.parts, faiss=self.snapshot.faiss, counts=self.snapshot.counts,
                       state="complete", serving="snapshot (an extension is in progress)")

    def to_dict(self) -> dict:
        d = {"format": "embedsearch-index", "format_version": self.format_version, "name": self.name,
             "created": self.created, "state": self.state, "space": self.space.to_dict(), "backbone": self.backbone,
             "normalization": self.normalization, "parts": [p.to_dict() for p in self.parts],
             "faiss": self.faiss.to_dict() if self.faiss else None, "source": self.source, "build": self.build,
             "versions": self.versions, "catalog": self.catalog}
        for k in ("backbone_config", "counts"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.snapshot is not None:
            d["snapshot"] = self.snapshot.to_dict()
        if self.updated:
            d["updated"] = self.updated
        return {**d, **{k: v for k, v in self.extra.items() if k not in d}}

    @classmethod
    def from_dict(cls, m, source: Path | str = "manifest.json") -> Manifest:
        if not isinstance(m, dict):
            raise IndexStateError(f"manifest {source}: the top level is not an object")
        if m.get("format") != "embedsearch-index":
            raise IndexStateError(f"{source} is not an embedsearch index (format {m.get('format')!r})")
        version = m.get("format_version")
        if type(version) is int and version > FORMAT_VERSION:  # before the fields: a newer format may differ
            raise IndexStateError(f"{source} has format version {version}, written by a newer embedsearch; this one "
                                  f"reads up to {FORMAT_VERSION}: upgrade embedsearch")
        if isinstance(m.get("source"), dict) and m["source"]:
            from_record(_SourceHead, {k: m["source"][k] for k in ("spec", "options") if k in m["source"]}, "source",
                        source=source)
        known = {f.name for f in fields(cls)} - {"extra", "serving"}
        return from_record(cls, {**{k: v for k, v in m.items() if k in known},
                                 "extra": {k: v for k, v in m.items() if k not in known and k != "format"}},
                           "", source=source)

    @classmethod
    def load(cls, layout: Layout) -> Manifest:
        if not layout.manifest.exists():
            if not layout.dir.exists():
                raise IndexStateError(f"no index at {layout.dir} (build one with `embedsearch index SOURCE --name NAME`)")
            raise IndexStateError(f"{layout.manifest} is missing; run `embedsearch verify {layout.dir} --repair`")
        try:
            m = json.loads(layout.manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexStateError(f"manifest {layout.manifest} is corrupt ({e})") from None
        except OSError as e:
            raise IndexStateError(f"manifest {layout.manifest}: {e.strerror}") from None
        if not isinstance(m, dict):
            raise IndexStateError(f"manifest {layout.manifest} is not a JSON object")
        return cls.from_dict(m, layout.manifest)

    def save(self, layout: Layout) -> None:
        from embedsearch.core.files import atomic_write_bytes

        self.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_bytes(layout.manifest, (json.dumps(self.to_dict(), indent=2, default=str) + "\n").encode())


def check_space(layout: Layout, manifest: Manifest, wanted: Space) -> None:
    """Refuse to extend an index with vectors from a different embedding space (never a mixed index)."""
    have, want = manifest.space.to_dict(), wanted.to_dict()
    for k in (*SPACE_FIELDS, "dtype", *manifest.space.recorded):
        if have.get(k) != want.get(k):
            raise IndexStateError(
                f"index {layout.dir.name} was built with {k}={json.dumps(have.get(k))}, this run has "
                f"{k}={json.dumps(want.get(k))}: use the original settings or a new --name")


def check_consistent(layout: Layout, manifest: Manifest) -> None:
    """Cheap checks on open: no entry links outside the folder; every listed part and the FAISS file exist with the
    recorded size and counts."""
    layout.check_confined()
    for p in manifest.parts:
        f = layout.parts / p.file
        if not f.exists():
            raise IndexStateError(f"part {f} listed in the manifest is missing; run `embedsearch verify --repair`")
        if f.stat().st_size != p.bytes:
            raise IndexStateError(f"part {f} has {f.stat().st_size} bytes, the manifest says {p.bytes}: "
                                  "it changed after it was written; run `embedsearch verify --repair`")
    fa = manifest.faiss
    if not fa:
        raise IndexStateError(f"the manifest of {layout.dir} records no FAISS index; run `embedsearch verify --repair`")
    if not layout.faiss.exists():
        raise IndexStateError(f"FAISS file {layout.faiss} is missing; run `embedsearch verify --repair`")
    if layout.faiss.stat().st_size != fa.bytes or fa.ntotal != manifest.rows:
        raise IndexStateError(f"FAISS file {layout.faiss} does not match the manifest ({fa.ntotal} vectors "
                              f"recorded, {manifest.rows} in the parts); run `embedsearch verify --repair`")
    if fa.lists_file:
        lf = layout.dir / fa.lists_file
        if lf.is_symlink() or not lf.is_file():
            raise IndexStateError(f"inverted-lists file {lf} is missing (or a link); run `embedsearch verify --repair`")
        if lf.stat().st_size != fa.extra["storage"]["lists_bytes"]:
            raise IndexStateError(f"inverted-lists file {lf} has {lf.stat().st_size} bytes, the manifest says "
                                  f"{fa.extra['storage']['lists_bytes']}; run `embedsearch verify --repair`")


@contextmanager
def writer_lock(layout: Layout):
    """One writer per index: a second `embedsearch index` fails fast, naming the process that holds the lock."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.check_confined()
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise IndexStateError(f"index {layout.dir} is locked by PID {holder} (another embedsearch is writing it); "
                                  "wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock; the file stays (harmless, and avoids an unlink race)
