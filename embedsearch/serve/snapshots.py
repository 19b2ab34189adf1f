"""The indexes a server answers from: one complete snapshot per index, swapped when a writer commits a new one.

A request takes the current `ServedState` once and answers from it alone, so every response comes from
one consistent state (its manifest, FAISS file, catalog copy and parts) even while `index --add` or
`verify --repair` runs. Each snapshot reads its own private copy of the catalog file (`connect_readonly`), so the
server never holds the DuckDB file that a writer in another process needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from embedsearch.core.errors import EmbedsearchError, IndexStateError
from embedsearch.reader import Index
from embedsearch.report.html import Thumbnails

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.25  # how often a request may look at the manifest for a newer snapshot


@dataclass
class ServedState:
    """One opened, complete state of an index. Requests use it from many threads at once: each thread queries the
    catalog snapshot through its own DuckDB connection (`Index.con`), and FAISS searches a shared index in
    parallel, so nothing on the search path runs one request at a time."""

    ix: Index
    key: str  # names the snapshot in every response
    thumbs: Thumbnails
    _columns: int | None = None

    @classmethod
    def open(cls, layout_dir: Path, image_roots: tuple[str, ...] = ()) -> ServedState:
        ix = Index.open(str(layout_dir) + os.sep)
        ix.con  # noqa: B018 — the catalog snapshot opens now, not inside the first requests
        m = ix.manifest
        parts = ",".join(f"{p.number}:{p.sha256}" for p in m.parts)
        key = f"{m.faiss.ntotal if m.faiss else 0}-{hashlib.sha256(parts.encode()).hexdigest()[:12]}"
        # images only from the folders the person named (--image-root) or indexed from, never from one the
        # manifest names on its own (see Thumbnails)
        return cls(ix=ix, key=key, thumbs=Thumbnails(ix, image_roots=image_roots))

    def columns(self) -> int:
        """How many catalog columns each hit carries (what a response costs per hit)."""
        if self._columns is None:
            self._columns = len(self.ix.columns())
        return self._columns


def _stamp(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Served:
    """One index name: its current snapshot, reopened when the manifest file changes and the new state opens
    cleanly (a repair in progress, or a half-written state, keeps the old snapshot serving)."""

    def __init__(self, name: str, layout_dir: Path, image_roots: tuple[str, ...] = ()):
        self.name, self.dir, self.image_roots = name, layout_dir, image_roots
        self._swap = threading.Lock()
        self._checked = 0.0
        self._stamp = _stamp(layout_dir / "manifest.json")
        self.current = ServedState.open(layout_dir, image_roots)

    def recheck(self) -> None:
        """Look at the manifest again on the next request, whatever the time since the last look."""
        self._checked = 0.0
        self._stamp = None

    def get(self) -> ServedState:
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY_S and self._swap.acquire(blocking=False):
            try:
                self._checked = now
                stamp = _stamp(self.dir / "manifest.json")
                if stamp != self._stamp:
                    self._reopen(stamp)
            finally:
                self._swap.release()
        return self.current

    def _reopen(self, stamp) -> None:
        try:
            snap = ServedState.open(self.dir, self.image_roots)
        except EmbedsearchError as e:  # e.g. a repair in progress: keep answering from the last snapshot
            log.warning("%s: keeping snapshot %s (%s)", self.name, self.current.key, e)
            return
        self._stamp = stamp
        if snap.key != self.current.key:
            log.warning("%s: now serving snapshot %s (was %s)", self.name, snap.key, self.current.key)
            self.current = snap  # the old one is closed by the garbage collector when its last request ends
        else:
            snap.ix.close()


class Registry:
    """The indexes a server may answer for: the names it was started with, or every index under the root (looked
    up again for a name it does not know yet). A name is only ever a key here, never joined to a path from a
    request. `image_roots`: folders whose images may be served (`serve --image-root`), besides those the user
    indexed from."""

    def __init__(self, root: Path, names: list[str] | None = None, image_roots=()):
        self.root, self.fixed = root, list(names or [])
        self.image_roots = tuple(str(r) for r in image_roots)
        self._served: dict[str, Served] = {}
        self._lock = threading.Lock()
        for n in self.fixed:
            self._load(n, must=True)

    def names(self) -> list[str]:
        if self.fixed:
            return list(self.fixed)
        try:
            found = sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").is_file())
        except OSError:
            found = []
        return found

    def _load(self, name: str, must: bool = False) -> Served | None:
        with self._lock:
            if name in self._served:
                return self._served[name]
            try:
                s = Served(name, self.root / name, self.image_roots)
            except EmbedsearchError:
                if must:
                    raise
                return None
            self._served[name] = s
            return s

    def loaded(self) -> list[Served]:
        return list(self._served.values())

    def get(self, name: str) -> Served | None:
        s = self._served.get(name)
        if s is not None:
            return s
        if name not in self.names():  # exact match against the listing: '..', paths, encodings never get here
            return None
        return self._load(name)

    def check(self) -> None:
        """At start-up: at least one index (every named one was opened by __init__, or raised)."""
        if not self.names():
            raise IndexStateError(f"no index under {self.root}: build one with `embedsearch index`, or pass --root")
