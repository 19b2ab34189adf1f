"""The index directory: its layout, the JSON manifest that describes it, the writer lock and consistency checks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedsearch.core.errors import IndexStateError

FORMAT_VERSION = 1


def default_root() -> Path:
    """Where `NAME` indexes live: $EMBEDSEARCH_HOME (read at each call) or ./indexes."""
    return Path(os.environ.get("EMBEDSEARCH_HOME", "indexes"))


# fields of the backbone description that define the embedding space (a resume must match them all)
SPACE_FIELDS = ("spec", "kind", "model", "weights_sha256", "preprocess", "pool", "dim")


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
    def lock(self) -> Path:
        return self.dir / ".lock"


def resolve(name_or_path: str | os.PathLike, root: Path | None = None) -> Layout:
    """`NAME` lives under the indexes root (EMBEDSEARCH_HOME or ./indexes); a path to a directory is used as is."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "manifest.json").exists():
        return Layout(p)
    if "/" in str(name_or_path) or str(name_or_path) in ("", ".", ".."):
        return Layout(p)
    return Layout(Path(root or default_root()) / str(name_or_path))


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("embedsearch", "torch", "timm", "open_clip_torch", "faiss-cpu", "faiss-gpu", "duckdb", "pyarrow",
                "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def read_manifest(layout: Layout) -> dict:
    if not layout.manifest.exists():
        if not layout.dir.exists():
            raise IndexStateError(f"no index at {layout.dir} (build one with `embedsearch index SOURCE --name NAME`)")
        raise IndexStateError(f"{layout.manifest} is missing; run `embedsearch verify {layout.dir} --repair`")
    try:
        m = json.loads(layout.manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexStateError(f"manifest {layout.manifest} is corrupt ({e})") from None
    if m.get("format") != "embedsearch-index" or m.get("format_version", 0) > FORMAT_VERSION:
        raise IndexStateError(f"{layout.manifest} is not an embedsearch index this version can read "
                              f"(format {m.get('format')} v{m.get('format_version')})")
    return m


def write_manifest(layout: Layout, manifest: dict) -> None:
    from embedsearch.core.files import atomic_write_bytes

    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_bytes(layout.manifest, (json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n").encode())


def space_of(backbone_desc: dict, dtype: str, precision: str | None = None) -> dict:
    return {**{k: backbone_desc.get(k) for k in SPACE_FIELDS}, "dtype": dtype, "precision": precision}


def check_space(layout: Layout, manifest: dict, wanted: dict) -> None:
    """Refuse to extend an index with vectors from a different embedding space (never a mixed index)."""
    have = manifest.get("space", {})
    for k in (*SPACE_FIELDS, "dtype", "precision"):
        if k == "precision" and k not in have:  # indexes built before it was recorded
            continue
        if have.get(k) != wanted.get(k):
            raise IndexStateError(
                f"index {layout.dir.name} was built with {k}={json.dumps(have.get(k))}, this run has "
                f"{k}={json.dumps(wanted.get(k))}: use the original settings or a new --name")


def check_consistent(layout: Layout, manifest: dict) -> None:
    """Cheap checks on open: every listed part and the FAISS file exist with the recorded size and counts."""
    total = 0
    for p in manifest.get("parts", []):
        f = layout.parts / p["file"]
        if not f.exists():
            raise IndexStateError(f"part {f} listed in the manifest is missing; run `embedsearch verify --repair`")
        if f.stat().st_size != p["bytes"]:
            raise IndexStateError(f"part {f} has {f.stat().st_size} bytes, the manifest says {p['bytes']}: "
                                  "it changed after it was written; run `embedsearch verify --repair`")
        total += p["rows"]
    fa = manifest.get("faiss")
    if not fa:
        raise IndexStateError(f"the manifest of {layout.dir} records no FAISS index; run `embedsearch verify --repair`")
    if not layout.faiss.exists():
        raise IndexStateError(f"FAISS file {layout.faiss} is missing; run `embedsearch verify --repair`")
    if layout.faiss.stat().st_size != fa["bytes"] or fa["ntotal"] != total:
        raise IndexStateError(f"FAISS file {layout.faiss} does not match the manifest ({fa['ntotal']} vectors "
                              f"recorded, {total} in the parts); run `embedsearch verify --repair`")


@contextmanager
def writer_lock(layout: Layout):
    """One writer per index: a second `embedsearch index` fails fast, naming the process that holds the lock."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
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
