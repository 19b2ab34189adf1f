"""Files written whole or not at all: atomic write (temporary name, fsync, rename, fsync of the folder), sha256,
one-line write errors, and the crash points the crash tests aim at."""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from embedsearch.core.errors import IndexStateError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_crash_counts: dict[str, int] = {}


def crash_point(tag: str) -> None:
    """Crash tests aim `kill -9` here: with EMBEDSEARCH_CRASH_AT=TAG (or TAG#N for its N-th occurrence) the process
    SIGKILLs itself at that point, e.g. `before-rename:index.faiss`. Does nothing otherwise."""
    want = os.environ.get("EMBEDSEARCH_CRASH_AT")
    if not want:
        return
    name, _, nth = want.partition("#")
    if name == tag:
        _crash_counts[tag] = _crash_counts.get(tag, 0) + 1
        if _crash_counts[tag] == int(nth or 1):
            os.kill(os.getpid(), 9)


class _HashingFile:
    """A write-only file that hashes and counts what goes through it, and keeps the OSError of a failed write (a
    writer calling back from C++, like FAISS's, may turn it into a RuntimeError)."""

    def __init__(self, f, name: str):
        self.f, self.name, self.h, self.n, self.error = f, name, hashlib.sha256(), 0, None

    def write(self, b) -> int:
        try:
            self.f.write(b)
        except OSError as e:
            self.error = e
            raise
        self.h.update(b)
        self.n += len(b)
        crash_point(f"mid-write:{self.name}")
        return len(b)


def temporary_name(path: Path) -> Path:
    """A hidden temporary name beside `path`, unique per process and call (two writers never share one); a leftover
    matches `.*.tmp-*`, which the index's writer removes on its next run."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path to write `path`'s new content into; on success the file is fsynced, renamed over `path`
    and its folder fsynced, so readers see the old or the new file, never a partial one. A failure (including a full
    disk) removes the temporary file and leaves `path` as it was."""
    tmp = temporary_name(path)
    with write_errors(path, tmp):
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        crash_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        crash_point(f"after-rename:{path.name}")


def atomic_write(path: Path, write) -> dict:
    """`write(file)` into a temporary name, then `atomic_path`'s fsync and rename. Returns the bytes and sha256 of
    what was written (computed on the way, no re-read)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        hf = _HashingFile(f, path.name)
        try:
            write(hf)
        except Exception:
            if hf.error is not None:
                raise hf.error from None
            raise
    return {"bytes": hf.n, "sha256": hf.h.hexdigest()}


def atomic_write_bytes(path: Path, data: bytes) -> dict:
    return atomic_write(path, lambda f: f.write(data))


@contextmanager
def write_errors(path: Path, tmp: Path | None = None):
    """Turn a failed write (disk full, I/O error, file too large, permission) into one line naming the file; the
    temporary file goes, and whatever was at `path` before stays as it was."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        why = e.strerror or str(e).splitlines()[0][:160]
        raise IndexStateError(f"cannot write {path}: {why} (errno {e.errno}); data committed before is intact — "
                              "free space or fix the disk, then re-run the same command") from None


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
