import numpy as np
import pytest

from embedsearch.core.errors import ConfigError, QueryError
from embedsearch.core.vectors import l2_normalize
from embedsearch.store import faiss_index as vindex


def _data(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(10_000)[:n].astype(np.int64) * 3, rng.normal(size=(n, d)).astype(np.float32)


def test_flat_search_equals_numpy_brute_force():
    ids, v = _data()
    ix = vindex.build_index([(ids[:200], v[:200]), (ids[200:], v[200:])], 32, "Flat")
    q = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    scores, got = vindex.search(ix, q, 10)
    sims = l2_normalize(q) @ l2_normalize(v).T
    want = ids[np.argsort(-sims, axis=1)[:, :10]]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :10], rtol=1e-5, atol=1e-5)


def test_factory_strings_and_ids(tmp_path):
    ids, v = _data(2000, 16)
    for factory in ("HNSW16", "IVF8,Flat"):
        ix = vindex.build_index([(ids, v)], 16, factory, train_sample=v)
        _, got = vindex.search(ix, v[:5], 1)
        assert set(got[:, 0]) <= set(ids.tolist())
        vindex.save_index(ix, tmp_path / "i.faiss")
        assert vindex.load_index(tmp_path / "i.faiss").ntotal == 2000
    with pytest.raises(ConfigError, match="bad FAISS factory string"):
        vindex.make_index(16, "NotAnIndex")


def test_search_rejects_bad_queries_and_caps_k():
    ids, v = _data(5, 8)
    ix = vindex.build_index([(ids, v)], 8)
    s, got = vindex.search(ix, v[0], 50)
    assert got.shape == (1, 5) and (got >= 0).all()
    with pytest.raises(QueryError, match="8-d"):
        vindex.search(ix, np.ones((1, 7)), 3)
    with pytest.raises(QueryError, match="NaN"):
        vindex.search(ix, np.full((1, 8), np.nan), 3)
    for k in (0, -1):
        with pytest.raises(QueryError, match="at least 1"):
            vindex.search(ix, v[:1], k)
    empty = vindex.build_index([], 8)
    assert vindex.search(empty, v[:1], 3)[1].shape == (1, 0)


def test_fp16_batch_path_and_single_query_path_equal_faiss_own_search(monkeypatch):
    monkeypatch.setattr(vindex, "FP16_BLOCK", 1100)  # three blocks, the last one short
    ids, v = _data(3000, 24)
    q = np.random.default_rng(2).normal(size=(40, 24)).astype(np.float32)
    for factory in ("SQfp16", "Flat"):
        ix = vindex.build_index([(ids, v)], 24, factory)
        want_s, want = ix.search(l2_normalize(q), 7)  # FAISS's own loop (IDMap2 maps positions to ids)
        for batch in (q, q[:1]):  # 40 queries: blocked fp16 → fp32 GEMM for SQfp16; 1 query: one thread
            s, got = vindex.search(ix, batch, 7)
            np.testing.assert_array_equal(got, want[:len(batch)])
            np.testing.assert_allclose(s, want_s[:len(batch)], atol=1e-6)
