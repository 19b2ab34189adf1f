"""The external engine: vectors computed elsewhere (`index --vectors FILE`) committed part by part like an engine's,
so an imported index has the same parts, catalog, FAISS file and resume as an embedded one. Nothing runs a model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedsearch.build.engines.local import PartResult, Timings
from embedsearch.core.errors import SourceError
from embedsearch.sources.datasets import Source
from embedsearch.store import parts as store


class ExternalEngine:
    """Commit each part's imported vectors; every item of the source has one (`load_external_vectors` checks)."""

    name = "external"

    def __init__(self, vectors: dict[int, np.ndarray]):
        self.vectors = vectors

    def embed(self, backbone, parts: list[tuple[int, list]], root: Path | None,
              commit: Callable[[PartResult], None]) -> tuple[Timings, dict]:
        t = Timings()
        t0 = time.perf_counter()
        for part, recs in parts:
            ids = np.asarray([r.id for r in recs], np.int64)
            rows = [{"id": r.id, "status": "ok", "stage": None, "error_type": None, "error": None, "width": None,
                     "height": None} for r in recs]
            commit(PartResult(part, ids, np.stack([self.vectors[r.id] for r in recs]), rows))
            t.images += len(recs)
        t.wall = time.perf_counter() - t0
        return t, {"engine": "external"}

    def map(self, fn: Callable, calls: list[tuple], on_done: Callable[[int, object], None]) -> None:
        for i, args in enumerate(calls):  # here, like the local engine
            on_done(i, fn(*args))


def load_external_vectors(path: Path, source: Source) -> dict[int, np.ndarray]:
    """Vectors computed elsewhere: `.npy` (rows in source order), Parquet (an `id` or `path` column + a list
    column), or JSON (a list of lists in source order, or an object keyed by id or path)."""
    if not path.is_file():
        raise SourceError(f"--vectors {path} does not exist")
    recs = source.records
    by_key = {str(r.id): r.id for r in recs} | {r.path: r.id for r in recs if r.path}
    suffix = path.suffix.lower()
    if suffix == ".npy":
        rows = _aligned(store.load_npy(path, "--vectors", SourceError), recs, path)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        vcol = next((c for c in t.column_names if str(t.schema.field(c).type).startswith(("list", "fixed_size_list",
                                                                                           "large_list"))), None)
        if vcol is None:
            raise SourceError(f"--vectors {path} has no list column of vectors (columns: {', '.join(t.column_names)})")
        vecs = np.asarray(t.column(vcol).to_pylist(), dtype=np.float32)
        key = "id" if "id" in t.column_names else "path" if "path" in t.column_names else None
        if key is None:
            rows = _aligned(vecs, recs, path)
        else:
            rows = {}
            for k, v in zip(t.column(key).to_pylist(), vecs, strict=False):
                if str(k) not in by_key:
                    raise SourceError(f"--vectors {path}: {key} {k!r} is not in the source")
                rows[by_key[str(k)]] = v
    elif suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, list):
            rows = _aligned(np.asarray(data, dtype=np.float32), recs, path)
        elif isinstance(data, dict):
            rows = {}
            for k, v in data.items():
                if k not in by_key:
                    raise SourceError(f"--vectors {path}: key {k!r} is neither an id nor a path of the source")
                rows[by_key[k]] = np.asarray(v, dtype=np.float32).reshape(-1)
        else:
            raise SourceError(f"--vectors {path}: expected a JSON list of vectors or an object of id/path → vector")
    else:
        raise SourceError(f"--vectors {path}: expected .npy, .parquet or .json")
    dims = {v.shape[0] for v in rows.values()}
    if len(dims) != 1:
        raise SourceError(f"--vectors {path}: vectors have different lengths {sorted(dims)[:5]}")
    missing = [r.id for r in recs if r.id not in rows]
    if missing:
        raise SourceError(f"--vectors {path} has no vector for {len(missing)} source items (e.g. id {missing[0]})")
    return rows


def _aligned(arr: np.ndarray, recs, path: Path) -> dict[int, np.ndarray]:
    if arr.ndim != 2 or len(arr) != len(recs):
        raise SourceError(f"--vectors {path}: shape {arr.shape}, expected ({len(recs)}, d) in source order")
    return {r.id: arr[i].astype(np.float32) for i, r in enumerate(recs)}
