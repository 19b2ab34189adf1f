"""An opened index: the manifest checked against the files, vectors from Parquet, metadata from DuckDB, FAISS."""

from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from embedsearch.core.errors import IndexStateError, QueryError
from embedsearch.store import catalog as cat
from embedsearch.store import parts as store
from embedsearch.store.manifest import Layout, check_consistent, read_manifest, resolve

_OPEN_WAIT_S = 5.0  # how long a reader waits for a writer to publish a manifest naming the new FAISS file


def _serving_view(layout: Layout, manifest: dict) -> dict:
    """What readers see: the manifest when complete; while `embedsearch index --add` extends it, the last complete
    snapshot (its parts and FAISS file), so queries keep working and never see a part or index in progress."""
    if manifest.get("state") == "complete":
        return manifest
    if manifest.get("state") == "repairing":
        raise IndexStateError(f"index {layout.dir} is being repaired (or a repair was interrupted): wait for it, "
                              "or run `embedsearch verify --repair` again")
    snap = manifest.get("snapshot")
    if not snap:
        raise IndexStateError(f"index {layout.dir} is not complete (state {manifest.get('state')!r}): re-run "
                              "the same `embedsearch index` command to resume it")
    return {**manifest, **snap, "state": "complete", "serving": "snapshot (an extension is in progress)"}


class Index:
    """Read access to one index directory. Opening refuses an index whose files disagree with its manifest.

    >>> ix = Index.open("digits-pixels")            # doctest: +SKIP
    >>> ix.sql("SELECT label, count(*) FROM items GROUP BY label")  # doctest: +SKIP
    """

    def __init__(self, layout: Layout, manifest: dict):
        self.layout, self.manifest = layout, manifest

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Index:
        layout = resolve(name_or_path, Path(root) if root else None)
        deadline = time.monotonic() + _OPEN_WAIT_S
        while True:
            on_disk = read_manifest(layout)
            manifest = _serving_view(layout, on_disk)
            try:
                check_consistent(layout, manifest)
                ix = cls(layout, manifest)
                if manifest.get("serving"):
                    ix.faiss  # noqa: B018 — map the snapshot's FAISS file now, before the writer replaces it
                return ix
            except IndexStateError:
                # A writer renames the new FAISS file into place right before it publishes the manifest naming it.
                # A reader that falls between the two (or whose manifest was replaced while it checked the files)
                # reads the manifest again; an index that stays inconsistent is reported.
                writer_active = on_disk.get("state") != "complete" or read_manifest(layout) != on_disk
                if not writer_active or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # ----------------------------------------------------------------------------------- description

    @property
    def name(self) -> str:
        return self.layout.dir.name

    @property
    def dim(self) -> int:
        return int(self.manifest["space"]["dim"])

    @property
    def backbone_spec(self) -> str:
        return self.manifest["space"]["spec"]

    @property
    def part_paths(self) -> list[Path]:
        return [self.layout.parts / p["file"] for p in self.manifest["parts"]]

    def info(self) -> dict:
        m = self.manifest
        return {"name": self.name, "path": str(self.layout.dir), "state": m["state"], "backbone": m["backbone"],
                "dtype": m["space"]["dtype"], "dim": self.dim, "source": m.get("source"), "counts": m.get("counts"),
                "parts": len(m["parts"]), "bytes_parts": sum(p["bytes"] for p in m["parts"]),
                "faiss": m.get("faiss"), "versions": m.get("versions"), "created": m.get("created"),
                "updated": m.get("updated")}

    # ----------------------------------------------------------------------------------- catalog

    @cached_property
    def con(self):
        return cat.connect_readonly(self.layout.catalog, self.part_paths)

    def sql(self, query: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only SELECT over `items`, `classes`, `runs`, `results` and `embeddings`."""
        import duckdb

        cat.check_select(query)
        try:
            cur = self.con.execute(query, params or [])
        except duckdb.Error as e:
            raise QueryError(f"SQL error: {str(e).splitlines()[0][:300]}") from None
        return [d[0] for d in cur.description], cur.fetchall()

    def classes(self) -> list[str]:
        """All class names of the dataset in class-index order (not only those present in a selection)."""
        return [r[0] for r in self.con.execute("SELECT name FROM classes ORDER BY class_index").fetchall()]

    def select(self, where: str | None = None, embedded_only: bool = True) -> dict[str, np.ndarray]:
        """Items matching a user predicate: arrays of id, class_index (-1 when unlabeled), label, split, path."""
        scope = None
        if embedded_only:  # items of the parts this reader serves (an extension may be adding more)
            parts = ", ".join(str(store.part_number(p["file"])) for p in self.manifest["parts"]) or "NULL"
            scope = f"status = 'ok' AND part IN ({parts})"
        rows = cat.select_ids(self.con, where, "id, coalesce(class_index, -1), label, split, path", scope=scope)
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

    @cached_property
    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        ids, vecs = store.read_all(self.part_paths, np.float32)
        order = np.argsort(ids, kind="stable")
        return ids[order], vecs[order] if len(vecs) else np.zeros((0, self.dim), np.float32)

    def vectors(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Raw float32 vectors for `ids` (all, in id order, when None). Unknown ids raise QueryError."""
        all_ids, vecs = self._all
        if ids is None:
            return vecs
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(all_ids, ids)
        pos = np.clip(pos, 0, max(len(all_ids) - 1, 0))
        if len(all_ids) == 0 or not np.array_equal(all_ids[pos], ids):
            missing = ids[(len(all_ids) == 0) | (all_ids[pos] != ids)] if len(all_ids) else ids
            raise QueryError(f"id {int(missing[0])} has no embedding in index {self.name}")
        return vecs[pos]

    def close(self) -> None:
        """Close the read-only catalog connection (DuckDB refuses a writer in the same process while it is open)."""
        if "con" in self.__dict__:
            self.__dict__.pop("con").close()

    @property
    def backbone_config(self):
        """The `BackboneConfig` the index was built with (the precision it ran at, the weights hash it produced)."""
        from embedsearch.models.config import BackboneConfig

        if self.manifest["space"].get("kind") == "external":
            raise QueryError(f"index {self.name} holds imported vectors: there is no backbone to embed new queries")
        return BackboneConfig.of_manifest(self.manifest)

    def backbone(self, device: str = "auto"):
        """The index's own backbone, recreated from its `BackboneConfig` and checked against its weights hash, for
        embedding new images and text in the same space."""
        return self.backbone_config.create(device)

    @cached_property
    def faiss(self):
        """The FAISS index, memory-mapped (vectors and IVF lists are paged in from the file on demand) with the
        search parameters recorded at build time (e.g. the auto-tuned nprobe)."""
        from embedsearch.store.faiss_index import load_index

        fa = self.manifest["faiss"]  # Index.open checked that one is recorded
        index = load_index(self.layout.faiss, mmap=True, params=fa.get("params"))
        if index.ntotal != fa["ntotal"]:
            raise IndexStateError(f"{self.layout.faiss} was replaced after {self.name} was opened ({index.ntotal} "
                                  f"vectors, {fa['ntotal']} when opened): open the index again")
        return index
