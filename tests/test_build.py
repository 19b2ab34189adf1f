import numpy as np
import pytest

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.errors import IndexStateError, SourceError
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source
from embedsearch.store import parts as store


def _cfg(root, name="ix", **kw):
    kw.setdefault("num_workers", 0)
    return BuildConfig.of(name=name, root=str(root), part_size=kw.pop("part_size", 4), **kw)


def test_folder_index_parts_catalog_and_faiss(image_folder, tmp_path):
    src = open_source(str(image_folder))
    s = build_index(src, _cfg(tmp_path, backbone="timm:test_vit", pretrained=False, num_workers=1), progress=False)
    assert s["items"] == 33 and s["embedded"] == 33 and s["failed"] == 0 and s["parts_total"] == 9
    ix = Index.open("ix", tmp_path)
    assert ix.dim == 64 and ix.manifest.space.dtype == "float16"
    cols, rows = ix.sql("SELECT i.split, count(*) FROM items i JOIN embeddings e USING (id) GROUP BY 1 ORDER BY 1")
    assert rows == [("test", 9), ("train", 24)]
    _, rows = ix.sql("SELECT min(width), max(width), count(DISTINCT class_index) FROM items")
    assert rows == [(32, 60, 3)]
    # FAISS returns exactly the nearest ids of a numpy brute force over the stored vectors
    ids, vecs = store.read_all(ix.part_paths)
    q = vecs[:5]
    _, got = __import__("embedsearch.store.faiss_index", fromlist=["search"]).search(ix.faiss, q, 6)
    n = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ n.T
    want = ids[np.argsort(-sims, axis=1, kind="stable")[:, :6]]
    assert (got[:, 0] == want[:, 0]).all()
    assert (np.sort(got, 1) == np.sort(want, 1)).mean() > 0.95  # ties in fp16 may reorder equal scores
    assert ix.manifest.faiss.ntotal == 33


def test_resume_after_interruption_has_no_duplicate_or_missing_ids(tmp_path, monkeypatch):
    src = open_source("digits")
    src.records = src.records[:60]
    cfg = dict(backbone="pixels:8", part_size=8)
    build_index(src, _cfg(tmp_path / "a", **cfg), progress=False)

    real_write, calls = store.write_part, {"n": 0}

    def crash_on_fourth(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if killed while writing part 3
        return real_write(*a, **kw)

    monkeypatch.setattr(store, "write_part", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        build_index(src, _cfg(tmp_path / "b", **cfg), progress=False)
    monkeypatch.setattr(store, "write_part", real_write)
    with pytest.raises(IndexStateError, match="not complete"):
        Index.open("ix", tmp_path / "b")
    s = build_index(src, _cfg(tmp_path / "b", **cfg), progress=False)
    assert s["parts_embedded"] == 5  # 8 parts planned, 3 committed before the crash
    a, b = Index.open("ix", tmp_path / "a"), Index.open("ix", tmp_path / "b")
    ia, va = store.read_all(a.part_paths)
    ib, vb = store.read_all(b.part_paths)
    assert sorted(ib.tolist()) == sorted(r.id for r in src.records) and len(set(ib.tolist())) == 60
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(va, vb)
    assert not list((tmp_path / "b").rglob(".*.tmp-*"))


def test_add_embeds_only_new_items_and_drift_is_refused(tmp_path):
    src = open_source("digits")
    all_recs = src.records
    src.records = all_recs[:30]
    build_index(src, _cfg(tmp_path, backbone="pixels:8"), progress=False)
    src.records = all_recs[:50]
    with pytest.raises(IndexStateError, match="pass --add"):
        build_index(src, _cfg(tmp_path, backbone="pixels:8"), progress=False)
    s = build_index(src, _cfg(tmp_path, backbone="pixels:8", add=True), progress=False)
    assert s["parts_embedded"] == 5 and s["items"] == 50 and s["embedded"] == 50
    for change in (dict(backbone="pixels:16"), dict(backbone="pixels:8", dtype="float32")):
        with pytest.raises(IndexStateError, match="was built with"):
            build_index(src, _cfg(tmp_path, add=True, **change), progress=False)
    assert Index.open("ix", tmp_path).manifest.faiss.ntotal == 50


def test_autocast_precision_is_part_of_the_space(tmp_path, monkeypatch):
    from embedsearch.build import pipeline as build

    src = open_source("digits")
    all_recs = src.records
    src.records = all_recs[:8]
    vit = dict(backbone="timm:test_vit", pretrained=False, image_size=32, dtype="float32")
    build_index(src, _cfg(tmp_path, precision="bf16", **vit), progress=False)
    assert Index.open("ix", tmp_path).manifest.space.precision == "bf16"
    src.records = all_recs[:12]
    with pytest.raises(IndexStateError, match='precision="bf16", this run has precision="fp32"'):
        build_index(src, _cfg(tmp_path, precision="fp32", add=True, **vit), progress=False)
    s = build_index(src, _cfg(tmp_path, precision="bf16", add=True, **vit), progress=False)
    assert s["embedded"] == 12 and s["precision"] == "bf16"
    # `auto` continues an index at its recorded precision, whatever this machine would pick
    monkeypatch.setattr(build, "resolve_precision", lambda p, device: "bf16" if p == "auto" else p)
    build_index(src, _cfg(tmp_path, name="f32", precision="fp32", **vit), progress=False)
    src.records = all_recs[:16]
    s = build_index(src, _cfg(tmp_path, name="f32", precision="auto", add=True, **vit), progress=False)
    assert s["precision"] == "fp32" and Index.open("f32", tmp_path).manifest.space.precision == "fp32"
    # no network, no precision: pixels indexes resume whatever --precision says
    build_index(src, _cfg(tmp_path, name="px", backbone="pixels:8", precision="bf16"), progress=False)
    assert Index.open("px", tmp_path).manifest.space.precision is None


def test_unreadable_image_is_recorded_not_fatal(image_folder, tmp_path):
    (image_folder / "train" / "red" / "broken.jpg").write_bytes(b"not really a jpeg")
    (image_folder / "train" / "red" / "empty.png").write_bytes(b"")
    s = build_index(open_source(str(image_folder)), _cfg(tmp_path, backbone="pixels:4"), progress=False)
    assert s["failed"] == 2 and s["embedded"] == 33
    _, rows = Index.open("ix", tmp_path).sql(
        "SELECT path, stage, error_type FROM items WHERE status = 'failed' ORDER BY path")
    assert rows == [("train/red/broken.jpg", "decode", "UnidentifiedImage"), ("train/red/empty.png", "decode", "EmptyFile")]


def test_external_vectors_npy_json_parquet(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = open_source("digits")
    src.records = src.records[:20]
    v = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    (tmp_path / "v.json").write_text(json.dumps(v.tolist()))
    pq.write_table(pa.table({"id": [r.id for r in src.records][::-1], "vec": v[::-1].tolist()}), tmp_path / "v.parquet")
    for f in ("v.npy", "v.json", "v.parquet"):
        build_index(src, _cfg(tmp_path / ("ix-" + f), vectors=str(tmp_path / f), dtype="float32"), progress=False)
        ix = Index.open("ix", tmp_path / ("ix-" + f))
        assert ix.manifest.space.kind == "external"
        np.testing.assert_allclose(ix.vectors([r.id for r in src.records]), v, rtol=1e-6)
    (tmp_path / "text.npy").write_text(json.dumps(v.tolist()))  # JSON under a .npy name: refused, never unpickled
    with pytest.raises(SourceError, match=r"text\.npy is not a \.npy file"):
        build_index(src, _cfg(tmp_path / "ix-text", vectors=str(tmp_path / "text.npy")), progress=False)


def test_space_is_recorded_in_manifest_and_parquet_schema(tmp_path):
    src = open_source("digits")
    src.records = src.records[:10]
    build_index(src, _cfg(tmp_path, backbone="timm:test_vit", pretrained=False, image_size=32), progress=False)
    ix = Index.open("ix", tmp_path)
    sp = ix.manifest.space.to_dict()
    assert sp["spec"] == "timm:test_vit" and sp["preprocess"]["input_size"] == [3, 32, 32] and len(sp["weights_sha256"]) == 64
    assert store.part_metadata(ix.part_paths[0])["space"] == sp
    assert {"torch", "timm", "faiss-cpu", "duckdb"} <= set(ix.manifest.versions)


def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    import os

    from embedsearch.store.manifest import resolve, writer_lock

    layout = resolve("ix", tmp_path)
    with writer_lock(layout):
        src = open_source("digits")
        with pytest.raises(IndexStateError, match=f"locked by PID {os.getpid()}"):
            build_index(src, _cfg(tmp_path, backbone="pixels:8"), progress=False)


def test_vectors_at_the_ends_of_float32_keep_their_direction(tmp_path):
    """Components ~1e30 overflow a float32 norm and ~1e-44 underflow it: both once became zero vectors that scored
    0 against everything. Each is found by itself, with cosine 1."""
    from embedsearch.query.search import search

    src = open_source("digits")
    src.records = src.records[:12]
    rng = np.random.default_rng(0)
    v = rng.normal(size=(12, 8)).astype(np.float32)
    v[3] *= np.float32(1e30)
    v[7] = (v[7] * np.float32(1e-44)).astype(np.float32)
    assert np.count_nonzero(v[7]) >= 4  # still a subnormal vector with a direction
    np.save(tmp_path / "v.npy", v)
    build_index(src, _cfg(tmp_path / "ix", vectors=str(tmp_path / "v.npy"), dtype="float32"), progress=False)
    ix = Index.open("ix", tmp_path / "ix")
    ids = [src.records[3].id, src.records[7].id]
    np.save(tmp_path / "q.npy", v[[3, 7]])
    hits = search(ix, vector_file=str(tmp_path / "q.npy"), k=1)
    assert [h["id"] for h in hits] == ids
    assert all(abs(h["score"] - 1) < 1e-5 for h in hits)
