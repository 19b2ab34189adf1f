"""An opened index: the manifest checked against the files, vectors from Parquet, metadata from DuckDB, FAISS."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np

from embedsearch.core.errors import IndexStateError, QueryError, first_line
from embedsearch.core.vectors import to_float32
from embedsearch.store import catalog as cat
from embedsearch.store import parts as store
from embedsearch.store.manifest import Layout, Manifest, check_consistent, resolve

_OPEN_WAIT_S = 5.0  # how long a reader waits for a writer to publish a manifest naming the new FAISS file
SQL_TIMEOUT_S = 60.0  # `sql`: a query that runs longer is interrupted (override with --timeout)
SQL_MEMORY_LIMIT = "4GB"  # DuckDB's memory for one reader's catalog snapshot and queries (--memory-limit)
# up to this many values, float16 rows are converted by numpy: torch's faster conversion is not worth importing torch
# (seconds, ~0.5 GB) for a search by id
SMALL_CONVERT = 1 << 16
CATALOG_LOOKUP_MAX = 100_000  # up to this many ids, `vectors` asks the catalog which parts hold them
IDS_CACHE_BYTES = 64 * 2**20  # the parts' id columns an opened index keeps (8 bytes an item: all of 8M items)


def _serving_view(layout: Layout, manifest: Manifest) -> Manifest:
    """What readers see: the manifest when complete; while `embedsearch index --add` extends it, the last complete
    snapshot (its parts and FAISS file), so queries keep working and never see a part or index in progress."""
    if manifest.state == "repairing":
        raise IndexStateError(f"index {layout.dir} is being repaired (or a repair was interrupted): wait for it, "
                              "or run `embedsearch verify --repair` again")
    return manifest.serving_view()


READ_THREADS = min(4, os.cpu_count() or 1)  # parts read at once by `Index.vectors` (overlaps reading and converting)


def _read_ahead(plan):
    """Yield (plan entry, the part's vectors) in plan order, decoding up to READ_THREADS parts ahead in threads
    (pyarrow releases the GIL), so at most that many parts are held besides the result."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_THREADS) as ex:
        pending = []
        for entry in plan:
            pending.append((entry, ex.submit(store.read_part, entry[0])))
            if len(pending) >= READ_THREADS:
                e, f = pending.pop(0)
                yield e, f.result()[1]
        for e, f in pending:
            yield e, f.result()[1]


class Index:
    """Read access to one index directory. Opening refuses an index whose files disagree with its manifest.

    >>> ix = Index.open("digits-pixels")            # doctest: +SKIP
    >>> ix.sql("SELECT label, count(*) FROM items GROUP BY label")  # doctest: +SKIP
    """

    def __init__(self, layout: Layout, manifest: Manifest, trust_code: bool = False):
        self.layout, self.manifest = layout, manifest
        self.memory_limit = SQL_MEMORY_LIMIT  # read when the catalog connection opens
        # the person trusts the code this index names (--trust-code): see models/code.py
        self.trust_code = trust_code
        # the catalog snapshot and a backbone are opened once, whichever thread (a server's request) asks first
        self._lock, self._backbone_lock = threading.Lock(), threading.Lock()

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, root: str | os.PathLike | None = None, *,
             trust_code: bool = False) -> Index:
        """Open an index for reading. `trust_code`: the person has read and trusts the code its backbone spec names
        (`py:`, `hub:`), so a query image may run it (it must still hash as recorded)."""
        layout = resolve(name_or_path, Path(root) if root else None)
        deadline = time.monotonic() + _OPEN_WAIT_S
        while True:
            on_disk = Manifest.load(layout)
            manifest = _serving_view(layout, on_disk)
            try:
                check_consistent(layout, manifest)
                ix = cls(layout, manifest, trust_code)
                # map the FAISS file now, inside this retry loop: mapped later, `index --add` may have replaced it
                # in between (a one-shot search failed "index.faiss was replaced" 3 times in 9)
                ix.faiss  # noqa: B018
                return ix
            except IndexStateError:
                # A writer renames the new FAISS file into place right before it publishes the manifest naming it.
                # A reader that falls between the two (or whose manifest was replaced while it checked the files)
                # reads the manifest again; an index that stays inconsistent is reported.
                writer_active = on_disk.state != "complete" or Manifest.load(layout) != on_disk
                if not writer_active or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # ----------------------------------------------------------------------------------- description

    @property
    def name(self) -> str:
        return self.layout.dir.name

    @property
    def dim(self) -> int:
        return self.manifest.space.dim

    @property
    def backbone_spec(self) -> str:
        return self.manifest.space.spec

    @property
    def part_paths(self) -> list[Path]:
        return [self.layout.parts / p.file for p in self.manifest.parts]

    def info(self) -> dict:
        m = self.manifest
        return {"name": self.name, "path": str(self.layout.dir), "state": m.state, "backbone": m.backbone,
                "dtype": m.space.dtype, "dim": self.dim, "source": m.source, "counts": m.counts,
                "parts": len(m.parts), "bytes_parts": sum(p.bytes for p in m.parts),
                "faiss": m.faiss.to_dict() if m.faiss else None, "versions": m.versions, "created": m.created,
                "updated": m.updated}

    # ----------------------------------------------------------------------------------- catalog

    @property
    def con(self):
        """This thread's catalog connection. All of them read the same snapshot (opened on first use); each thread
        has its own, so threads query in parallel (a server's requests), where one shared DuckDB connection would
        run one query at a time."""
        opened = self.__dict__.get("_catalog")
        if opened is None:
            with self._lock:  # two threads asking at once open one snapshot
                opened = self.__dict__.get("_catalog")
                if opened is None:
                    con = cat.connect_readonly(self.layout.catalog, self.part_paths, memory_limit=self.memory_limit)
                    opened = self.__dict__["_catalog"] = (con, threading.local())
                    opened[1].con = con  # the thread that opened it uses it
        con, local = opened
        cur = getattr(local, "con", None)
        if cur is None:
            cur = local.con = cat.cursor_readonly(con, self.part_paths)
        return cur

    def sql(self, query: str, params: list | None = None, *, timeout_s: float | None = SQL_TIMEOUT_S
            ) -> tuple[list[str], list[tuple]]:
        """Run one read-only SELECT over `items`, `classes`, `runs`, `results` and `embeddings`; all rows.
        Repeated column names are made unique (`id`, `id_2`), as a dict or JSON object needs."""
        cols, rows = self.sql_stream(query, params, timeout_s=timeout_s)
        return cols, list(rows)

    def sql_stream(self, query: str, params: list | None = None, *, timeout_s: float | None = SQL_TIMEOUT_S,
                   batch: int = 8192):
        """(column names, an iterator over the rows), fetched `batch` rows at a time: the first rows arrive before
        the query has produced the last. A query whose own work (time spent in DuckDB, not in a slow consumer of
        the rows) passes `timeout_s` (None: no limit), or that needs more than `memory_limit`, stops with a
        one-line QueryError."""
        import duckdb

        cat.check_select(query)
        con = self.con
        clock = _Budget(con, timeout_s)

        def fail(e: Exception) -> QueryError:
            if isinstance(e, duckdb.InterruptException) and clock.expired:
                return QueryError(f"the query ran past the time limit ({timeout_s:g} s): add a LIMIT or raise "
                                  "--timeout")
            if isinstance(e, duckdb.OutOfMemoryException):
                return QueryError(f"the query needs more than the memory limit ({self.memory_limit}): add a LIMIT, "
                                  "or raise --memory-limit")
            return QueryError(f"SQL error: {first_line(e, 300)}")

        try:
            cur = clock.run(con.execute, query, params or [])
        except duckdb.Error as e:
            raise fail(e) from None

        def rows():
            try:
                while chunk := clock.run(cur.fetchmany, batch):
                    yield from chunk
            except duckdb.Error as e:
                raise fail(e) from None

        return unique_names([d[0] for d in cur.description]), rows()

    def columns(self) -> list[str]:
        """The catalog's item columns, in table order."""
        return [r[0] for r in self.con.execute("DESCRIBE items").fetchall()]

    def splits(self) -> list[str]:
        """The split names items carry, sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT split FROM items WHERE split IS NOT NULL ORDER BY 1").fetchall()]

    def classes(self) -> list[str]:
        """All class names of the dataset in class-index order (not only those present in a selection)."""
        return [r[0] for r in self.con.execute("SELECT name FROM classes ORDER BY class_index").fetchall()]

    def select(self, where: str | None = None, embedded_only: bool = True, limit: int | None = None,
               offset: int = 0) -> dict[str, np.ndarray]:
        """Items matching a user predicate: arrays of id, class_index (-1 when unlabeled), label, split, path (in id
        order; `limit` items from `offset` when given)."""
        scope = None
        if embedded_only:  # items of the parts this reader serves (an extension may be adding more)
            parts = ", ".join(str(p.number) for p in self.manifest.parts) or "NULL"
            scope = f"status = 'ok' AND part IN ({parts})"
        rows = cat.select_ids(self.con, where, "id, coalesce(class_index, -1), label, split, path", scope=scope,
                              limit=limit, offset=offset)
        if not rows:
            return {"id": np.zeros(0, np.int64), "class_index": np.zeros(0, np.int64), "label": np.array([], object),
                    "split": np.array([], object), "path": np.array([], object)}
        ids, ci, label, split, path = zip(*rows, strict=False)
        return {"id": np.asarray(ids, np.int64), "class_index": np.asarray(ci, np.int64),
                "label": np.asarray(label, object), "split": np.asarray(split, object), "path": np.asarray(path, object)}

    def items_by_id(self, ids, columns: str = "*") -> dict[int, dict]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        cur = self.con.execute(f"SELECT {columns} FROM items WHERE id IN (SELECT unnest(?))", [ids])
        cols = [d[0] for d in cur.description]
        return {r[cols.index("id")]: dict(zip(cols, r, strict=False)) for r in cur.fetchall()}

    # ----------------------------------------------------------------------------------- vectors

    def _ids_of(self, path: Path) -> np.ndarray:
        """A part's ids (8 bytes an item: the id column alone is read), kept for the next selection: up to
        IDS_CACHE_BYTES of them, the least recently used dropped first (a server answering searches by id for
        days touches every part)."""
        with self._lock:
            cache = self.__dict__.setdefault("_ids_cache", OrderedDict())
            got = cache.get(path)
            if got is not None:
                cache.move_to_end(path)
                return got
        got = store.read_part(path, with_vectors=False)[0]
        with self._lock:
            cache[path] = got
            total = sum(a.nbytes for a in cache.values())
            while total > IDS_CACHE_BYTES and len(cache) > 1:
                total -= cache.popitem(last=False)[1].nbytes
        return got

    def _candidate_parts(self, ids, want: np.ndarray):
        """(path, ids) of the parts that may hold `want`. A few ids (a search by id, a small selection) are looked
        up in the catalog, so only the parts holding them are read, however large the index; otherwise (or once
        every part's ids are known) every part's id column is used."""
        known = self.__dict__.get("_ids_cache", {})
        if ids is None or len(known) == len(self.part_paths) or len(want) > CATALOG_LOOKUP_MAX:
            return [(p, self._ids_of(p)) for p in self.part_paths]
        parts = {r[0] for r in self.con.execute("SELECT DISTINCT part FROM items WHERE id IN (SELECT unnest(?)) "
                                                "AND status = 'ok'", [want.tolist()]).fetchall()}
        paths = [self.layout.parts / p.file for p in self.manifest.parts if p.number in parts]
        return [(p, self._ids_of(p)) for p in paths]

    def vectors(self, ids: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """Raw vectors for `ids` (all, in id order, when None), as `dtype` (None: the stored float16/float32).

        One columnar scan: each part holding a requested id is read once and only its requested rows are kept and
        converted, so memory is the result plus a few parts, whatever the index's size. Parts are read straight
        from their data pages (`store/pages.py`, 12× pyarrow's list decoding, docs/benchmarks/read.md), up to
        READ_THREADS at once. Unknown ids raise QueryError."""
        want = np.asarray(np.concatenate([self._ids_of(p) for p in self.part_paths]) if ids is None else ids,
                          np.int64)
        if ids is None:
            want = np.sort(want)
        order = np.argsort(want, kind="stable")
        sorted_want = want[order]
        plan = []  # (part path, its rows to keep, where they go in the result)
        for path, pids in self._candidate_parts(ids, want):
            if not len(pids):
                continue
            lo, hi = np.searchsorted(sorted_want, pids.min()), np.searchsorted(sorted_want, pids.max(), side="right")
            if lo == hi:  # no requested id in this part's range: not read
                continue
            p_order = np.argsort(pids, kind="stable")
            cand = order[lo:hi]
            at = np.clip(np.searchsorted(pids[p_order], want[cand]), 0, len(pids) - 1)
            hit = pids[p_order][at] == want[cand]
            if hit.any():
                plan.append((path, p_order[at[hit]], cand[hit]))
        out = None
        found = np.zeros(len(want), bool)
        for (_, rows_at, dest), vecs in _read_ahead(plan):
            if out is None:
                out = np.empty((len(want), vecs.shape[1]), dtype or vecs.dtype)
            whole = len(rows_at) == len(vecs) and (rows_at == np.arange(len(vecs))).all()
            rows = vecs if whole else vecs[rows_at]  # a part read whole, in order: no gather copy
            contiguous = bool(dest[-1] - dest[0] == len(dest) - 1 and (np.diff(dest) == 1).all())
            target = out[dest[0]:dest[-1] + 1] if contiguous else None
            if out.dtype == np.float32 and rows.dtype == np.float16 and rows.size > SMALL_CONVERT:
                converted = to_float32(rows, out=target)
                if target is None:
                    out[dest] = converted
            elif target is not None:
                target[...] = rows
            else:
                out[dest] = rows
            found[dest] = True
        if not found.all():
            raise QueryError(f"id {int(want[~found][0])} has no embedding in index {self.name}")
        return out if out is not None else np.zeros((len(want), self.dim), dtype or np.float32)

    def close(self) -> None:
        """Close the read-only catalog connection (and every thread's cursor on it)."""
        if "_catalog" in self.__dict__:
            self.__dict__.pop("_catalog")[0].close()

    @property
    def backbone_config(self):
        """The `BackboneConfig` the index was built with (the precision it ran at, the weights hash it produced)."""
        from embedsearch.models.config import BackboneConfig

        if self.manifest.space.kind == "external":
            raise QueryError(f"index {self.name} holds imported vectors: there is no backbone to embed new queries")
        return BackboneConfig.of_manifest(self.manifest)

    def backbone(self, device: str = "auto"):
        """The index's own backbone, recreated from its `BackboneConfig` and checked against its weights hash, for
        embedding new images and text in the same space (an index built from a Python module: the module given to
        `attach_module`)."""
        if getattr(self, "_module_backbone", None) is not None:
            return self._module_backbone
        cache = self.__dict__.setdefault("_backbones", {})  # created once per opened index and device
        with self._backbone_lock:  # a server's threads: one backbone, whichever request asks first
            if device not in cache:
                cache[device] = self.backbone_config.create(device, index=self.name, recorded=self.manifest.backbone,
                                                            trust_code=self.trust_code)
        return cache[device]

    def attach_module(self, model, transform) -> None:
        """For an index built from a ready nn.Module (`module:NAME`): the same module and transform again, so images
        can be queried; its weights must hash to the recorded ones."""
        from embedsearch.models.backbones import module_backbone

        if self.manifest.space.kind != "module":
            raise IndexStateError(f"index {self.name} was built with {self.backbone_spec}, not from a Python module")
        bc = self.backbone_config
        bb = module_backbone(model, transform, self.backbone_spec.split(":", 1)[1], pool=bc.pool, layer=bc.layer)
        if bb.info["weights_sha256"] != self.manifest.space.weights_sha256:
            raise IndexStateError(f"the module's weights differ from the ones index {self.name} was built with "
                                  "(weights hash mismatch): its vectors would land in another space")
        bb.config = bc
        self._module_backbone = bb

    @cached_property
    def faiss(self):
        """The FAISS index, memory-mapped (vectors and IVF lists are paged in from the file on demand) with the
        search parameters recorded at build time (e.g. the auto-tuned nprobe)."""
        from embedsearch.store.faiss_index import load_index

        fa = self.manifest.faiss  # Index.open checked that one is recorded
        index = load_index(self.layout.faiss, mmap=True, params=fa.params, on_disk=fa.lists_file is not None,
                           lists_file=fa.lists_file)
        if index.ntotal != fa.ntotal:
            raise IndexStateError(f"{self.layout.faiss} was replaced after {self.name} was opened ({index.ntotal} "
                                  f"vectors, {fa.ntotal} when opened): open the index again")
        return index


class _Budget:
    """Runs DuckDB calls with a time budget spent only inside them (not in a slow consumer of the rows). Each call
    runs in a worker thread while this thread waits, so Ctrl-C and the deadline are seen at once and stop the query
    with `interrupt()` (a call blocked inside DuckDB does not see Python's signals by itself)."""

    def __init__(self, con, seconds: float | None):
        self.con, self.left, self.expired = con, seconds, False

    def run(self, fn, *args):
        import threading

        out: dict = {}

        def work():
            try:
                out["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 — re-raised in the calling thread
                out["error"] = e

        t = threading.Thread(target=work, daemon=True)
        t0 = time.monotonic()
        t.start()
        try:
            while t.is_alive():
                t.join(0.05)
                if self.left is not None and not self.expired and time.monotonic() - t0 > self.left:
                    self.expired = True
                    self.con.interrupt()
        except KeyboardInterrupt:
            self.con.interrupt()
            t.join()
            raise
        finally:
            if self.left is not None:
                self.left -= time.monotonic() - t0
        if "error" in out:
            raise out["error"]
        return out["value"]


def unique_names(cols: list[str]) -> list[str]:
    """Column names as keys: a repeated name gets `_2`, `_3`… (`SELECT a.id, b.id` → id, id_2), never one that
    another column already has."""
    out: list[str] = []
    for c in cols:
        name, n = c, 1
        while name in out or (name != c and name in cols):
            n += 1
            name = f"{c}_{n}"
        out.append(name)
    return out
