"""What the source modules share: Record, Source, SourceOptions, path ids, ImageLoadError and the path check."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# The catalog's own columns (store.catalog.BASE_COLUMNS), spelled here because sources sit below the store: a source
# column must not take one of these names.
CATALOG_COLUMNS = ("id", "path", "label", "class_index", "split", "part", "status", "stage", "error_type", "error",
                   "width", "height")


@dataclass(slots=True)
class Record:
    """One item: `path` (relative to the source root) or an in-memory uint8 `array`, never both."""

    id: int
    label: str | None = None
    split: str | None = None
    path: str | None = None
    array: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Source:
    spec: str
    kind: str
    root: Path | None
    records: list[Record]
    classes: list[str]
    notes: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # the open_source() arguments, so the source can be reopened

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "options": self.options,
            "kind": self.kind,
            "root": str(self.root) if self.root else None,
            "items": len(self.records),
            "classes": len(self.classes),
            "splits": dict(Counter(r.split for r in self.records if r.split)),
            "notes": self.notes,
        }


def path_id(relpath: str) -> int:
    """A stable non-negative int64 id for a path relative to its root: the same file always gets the same id."""
    return int.from_bytes(hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class SourceOptions:
    """The options of `open_source` besides the spec, as an index records them (manifest `source.options`)."""

    root: str | None = None
    label_regex: str | None = None
    split: str | None = None
    seed: int = 0
    min_per_class: int = 0
    require_paths: bool = True


class ImageLoadError(Exception):
    """An image that cannot be embedded; `stage` says where it failed (path, decode)."""

    def __init__(self, stage: str, kind: str, message: str):
        super().__init__(message)
        self.stage, self.kind = stage, kind


def check_path(path: Path, root: Path | None) -> None:
    """Refuse paths that leave the dataset root as written (`..`, an absolute path elsewhere), symlink loops, and what
    is not a regular file. Symlinks are followed wherever they point: a dataset folder whose images (or class
    folders) link to shared storage, as ImageNet copies often are, is the user's own layout, and the root only
    guards against a path that names a file outside it (core/trust.py's rule, which the server shares)."""
    from embedsearch.core.trust import within

    if root is not None and not within(path, [root]):
        raise ImageLoadError("path", "OutsideRoot", f"{path} lies outside the dataset root {root}")
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageLoadError("path", "FileNotFoundError",
                                 f"broken symlink: {path} → {os.readlink(path)} does not exist") from None
        raise ImageLoadError("path", "FileNotFoundError", f"no such file: {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageLoadError("path", "SymlinkLoop", f"symlink loop at {path}") from None
        raise ImageLoadError("path", type(e).__name__, f"{path}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in a manifest's path
        raise ImageLoadError("path", "BadPath", f"{path!r}: {e}") from None
    if not stat.S_ISREG(st.st_mode):  # directories named x.jpg, FIFOs (would block), devices
        raise ImageLoadError("path", "NotAFile", f"{path} is not a regular file")
    if st.st_size == 0:
        raise ImageLoadError("decode", "EmptyFile", f"{path} is empty (0 bytes)")


def file_key(path: Path) -> tuple:
    """What identifies a file's current content for a per-process cache (shard member indexes, opened dataset
    files): its path, device, inode, size and modification time — a rewritten file is read again."""
    st = path.stat()
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
