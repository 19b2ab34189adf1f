"""Nearest-neighbour queries against an index: by image, id, text or vector, optionally filtered with --where."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedsearch.core.errors import QueryError
from embedsearch.core.vectors import drop_self
from embedsearch.store import faiss_index as vindex
from embedsearch.store import parts as store


def embed_images(ix, images, batch: int = 1) -> np.ndarray:
    """Decoded RGB images as (n, d) float32 in the index's space: its own backbone, recorded preprocessing and
    precision, one image at a time (as the CLI and the server do for query images) or `batch` at a time (as
    indexing does: many images, e.g. a calibration's copies)."""
    import torch

    from embedsearch.models.runtime import autocast

    bb = ix.backbone()
    w = next(bb.model.parameters(), None) if bb.model is not None else None
    dev = w.device if w is not None else "cpu"  # a model without parameters (a fixed transform) runs on the CPU
    out = []
    images = list(images)
    for a in range(0, len(images), batch):
        x = torch.stack([bb.preprocess(img) for img in images[a:a + batch]]).to(dev)
        with torch.inference_mode(), autocast(str(dev), bb.config.precision):
            out.append(bb.embed(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, ix.dim), np.float32)


def query_vectors(ix, *, images=(), ids=(), texts=(), vector_file=None, vectors=None, decoded=()
                  ) -> tuple[list[dict], np.ndarray]:
    """Embed the queries in the index's own space: (descriptions, (n, d) float32).

    images: files; decoded: (name, RGB image) pairs already decoded (uploads); vectors: an (n, d) array."""
    descs, vecs = [], []
    if images:
        from embedsearch.sources.images import ImageLoadError, load_image

        try:
            loaded = [load_image(f) for f in images]
        except ImageLoadError as e:
            raise QueryError(f"query image {e}") from None
        vecs.extend(embed_images(ix, loaded))
        descs.extend({"query": str(f), "exclude": None} for f in images)
    if decoded:
        vecs.extend(embed_images(ix, [img for _, img in decoded]))
        descs.extend({"query": str(name), "exclude": None} for name, _ in decoded)
    if ids:
        got = ix.vectors(np.asarray(ids, np.int64))
        for i, v in zip(ids, got, strict=False):
            vecs.append(v)
            descs.append({"query": f"id:{i}", "exclude": int(i)})
    if texts:
        import torch

        bb = ix.backbone()
        if bb.text is None:
            raise QueryError(f"--text needs a backbone with a text tower (open_clip, or a CLIP-style hf: model); "
                             f"{ix.name} was built with {ix.backbone_spec}")
        with torch.inference_mode():
            t = bb.text(list(texts)).float().cpu().numpy()
        vecs.extend(t)
        descs.extend({"query": f"text:{s}", "exclude": None} for s in texts)
    if vector_file:
        p = Path(vector_file)
        v = np.atleast_2d(store.load_npy(p, "--vector", QueryError)).astype(np.float32)
        vecs.extend(v)
        descs.extend({"query": f"{p.name}[{i}]", "exclude": None} for i in range(len(v)))
    if vectors is not None:
        v = np.atleast_2d(np.asarray(vectors, np.float32))
        vecs.extend(v)
        descs.extend({"query": f"vector[{i}]", "exclude": None} for i in range(len(v)))
    if not vecs:
        raise QueryError("give a query: --image FILE, --id ID, --text TEXT or --vector FILE.npy")
    return descs, np.stack(vecs).astype(np.float32)


SEARCH_BATCH = 1024  # queries per FAISS call: one scan of the index per batch, results streamed batch by batch
EXACT_FILTER_MAX = 20_000  # a --where selecting at most this many items is searched exactly over their vectors


def _filtered_index(ix, subset: np.ndarray):
    """For a selective --where on an approximate index, a small exact index over just the selected vectors: an IVF or
    HNSW index probes only part of itself and would return fewer than k hits, or miss some, when few items pass."""
    import faiss

    if subset is None or len(subset) > EXACT_FILTER_MAX or isinstance(vindex.unwrap(ix.faiss), faiss.IndexFlat):
        return ix.faiss, subset
    return vindex.build_index([(subset, ix.vectors(subset))], ix.dim, "Flat"), None


def iter_search(ix, descs: list[dict], q: np.ndarray, *, k: int = 10, where: str | None = None,
                batch: int | None = None):
    """Yield hit rows with their catalog metadata, one batch of queries at a time (bounded memory for large query
    files: one FAISS call and one catalog lookup per batch)."""
    if k < 1:
        raise QueryError(f"-k must be at least 1 (got {k})")
    subset = ix.select(where)["id"] if where else None
    index, subset = _filtered_index(ix, subset)
    extra = 1 if any(d["exclude"] is not None for d in descs) else 0
    batch = batch or SEARCH_BATCH
    for b0 in range(0, len(q), batch):
        chunk = descs[b0:b0 + batch]
        scores, hit_ids = vindex.search(index, q[b0:b0 + batch], k + extra, subset)
        own = np.asarray([-1 if d["exclude"] is None else d["exclude"] for d in chunk], np.int64)
        hit_ids, scores = drop_self(hit_ids, scores, own, k)
        meta = ix.items_by_id(np.unique(hit_ids[hit_ids >= 0]), "id, label, split, path")
        for d, row_s, row_i in zip(chunk, scores, hit_ids, strict=True):
            for rank, (s, i) in enumerate(((s, i) for s, i in zip(row_s, row_i, strict=True) if i >= 0), start=1):
                m = meta.get(int(i), {})
                yield {"query": d["query"], "rank": rank, "id": int(i), "score": round(float(s), 6),
                       "label": m.get("label"), "split": m.get("split"), "path": m.get("path")}


def search(ix, *, images=(), ids=(), texts=(), vector_file=None, k: int = 10, where: str | None = None) -> list[dict]:
    """Top-k hits per query with their catalog metadata; a query by id never returns itself.

    >>> search(Index.open("digits-pixels"), ids=[0], k=5, where="split = 'train'")   # doctest: +SKIP
    """
    from embedsearch.core.results import Rows

    if k < 1:
        raise QueryError(f"-k must be at least 1 (got {k})")
    descs, q = query_vectors(ix, images=images, ids=ids, texts=texts, vector_file=vector_file)
    return Rows(iter_search(ix, descs, q, k=k, where=where))
