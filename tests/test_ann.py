import json

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig, build_index
from embedsearch.cli import cli
from embedsearch.core.errors import QueryError, SpecError
from embedsearch.core.units import parse_size
from embedsearch.core.vectors import drop_self, l2_normalize
from embedsearch.evaluate import evaluate
from embedsearch.evaluate.quality import quality
from embedsearch.query import ann
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source
from embedsearch.store import faiss_index as vindex


def clustered(n, d, centres=100, seed=0):
    """Gaussian clusters around random centres with a low-rank spread: roughly what embeddings look like."""
    r = np.random.default_rng(seed)
    c = r.standard_normal((centres, d)).astype(np.float32)
    basis = r.standard_normal((8, d)).astype(np.float32) / 3
    lab = r.integers(0, centres, n)
    x = c[lab] + r.standard_normal((n, 8)).astype(np.float32) @ basis + 0.3 * r.standard_normal((n, d))
    return x.astype(np.float32)


def brute_force_ids(x, ids, q_pos, k):
    """Independent ground truth: numpy argsort over the full cosine matrix, the query itself removed."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn[q_pos] @ xn.T
    sims[np.arange(len(q_pos)), q_pos] = -np.inf
    return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def test_auto_meets_the_recall_target_against_numpy_ground_truth():
    n, d = 12_000, 32
    x, ids = clustered(n, d), np.arange(n, dtype=np.int64) * 5 + 3
    chunks = lambda: ((ids[i:i + 3000], x[i:i + 3000]) for i in range(0, n, 3000))  # noqa: E731
    for budget in (None, n * (d + 8) * 2):  # no limit (IVF-Flat), then too small for IVF-Flat and HNSW (IVF-SQ8)
        index, rec = ann.auto_index(chunks, n, d, max_memory=budget, target_recall=0.9, exact_up_to=1000,
                                    n_queries=300, seed=0)
        k = ann.nlist_for(n)
        assert rec["met"] and rec["chosen"] == (f"IVF{k},Flat" if budget is None else f"IVF{k},SQ8")
        assert budget is None or rec["bytes"] <= budget
        q_pos = np.random.default_rng(99).choice(n, 200, replace=False)  # other queries than the tuning ones
        s, got = vindex.search(index, x[q_pos], 11)
        got, _ = drop_self(got, s, ids[q_pos], 10)
        truth = brute_force_ids(x, ids, q_pos, 10)
        recall = np.mean([len(set(got[i]) & set(truth[i])) / 10 for i in range(len(q_pos))])
        assert recall >= 0.88, (rec["chosen"], recall)  # target 0.9 on the tuning queries; fresh ones scatter
        assert abs(recall - rec["recall"]["10-recall@10"]) < 0.05


def test_candidates_respect_budget_and_say_when_nothing_fits():
    c = ann.candidates(1_000_000, 384)
    assert [x.kind for x in c] == ["IVF-Flat", "HNSW", "IVF-SQ8", "IVF-PQ", "exact"]
    assert ann.nlist_for(1_000_000) == 4096
    small = ann.candidates(1_000_000, 384, max_memory=200 * 2**20)
    assert [x.kind for x in small] == ["IVF-PQ"] and all(x.bytes_estimate <= 200 * 2**20 for x in small)
    assert ann.candidates(1000, 384)[0].factory == "Flat"
    with pytest.raises(QueryError, match="no index type fits --max-memory 1 MiB"):
        ann.candidates(1_000_000, 384, max_memory=2**20)


def test_recalls_and_drop_self_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[2, 1, 9], [7, 8, 4]])
    r = ann.recalls(approx, exact, rs=(1, 3))
    assert r == {"1-recall@1": 0.0, "1-recall@3": 1.0, "3-recall@3": 0.5}
    ids, s = drop_self(np.array([[7, 3, 4], [1, 2, 3]]), np.ones((2, 3), np.float32), np.array([7, 9]), 2)
    assert ids.tolist() == [[3, 4], [1, 2]]


def test_filtered_search_on_ivf_and_hnsw_keeps_their_parameters():
    n, d = 4000, 16
    x, ids = clustered(n, d), np.arange(n, dtype=np.int64)
    subset = ids[ids % 3 == 0]
    xn = l2_normalize(x)
    truth = subset[np.argsort(-(xn[:20] @ xn[subset].T), axis=1)[:, :5]]
    for factory, params in (("IVF32,Flat", {"nprobe": 32}), ("HNSW16", {"efSearch": 64})):
        index = vindex.build_index([(ids, x)], d, factory, train_sample=x)
        vindex.set_params(index, params)
        _, got = vindex.search(index, x[:20], 5, subset)
        assert (got >= 0).all() and np.isin(got, subset).all()
        recall = np.mean([len(set(got[i]) & set(truth[i])) / 5 for i in range(20)])
        # nprobe = all 32 lists makes IVF-Flat exact: a typed selector keeps it (untyped ones raise in FAISS)
        assert recall == 1.0 if factory.startswith("IVF") else recall >= 0.9, (factory, recall)


def test_auto_index_pipeline_budget_smaller_than_the_parts(index_root):
    budget = 600_000  # digits at pixels:8 is 1797 × 192 floats = 1.38 MB of float32 vectors
    cfg = BuildConfig.of(name="auto", backbone="pixels:8", index="auto", max_memory=budget, target_recall=0.9,
                      num_workers=0, part_size=400)
    build_index(open_source("digits"), cfg, progress=False)
    ix = Index.open("auto")
    fa = ix.manifest.faiss
    raw = ix.manifest.rows * ix.dim * 4
    assert raw > budget and fa.requested == "auto" and "SQ8" in fa.factory
    assert fa.bytes <= budget and fa.extra["auto"]["met"] and fa.params["nprobe"] >= 1
    assert ix.faiss.nprobe == fa.params["nprobe"]  # the reader applies the tuned parameter
    q = quality(ix, n_queries=300)
    assert q["recall"]["10-recall@10"] >= 0.85


def test_quality_matches_independent_computation(index_root):
    build_index(open_source("digits"), BuildConfig.of(name="hn", backbone="pixels:8", index="HNSW8", num_workers=0),
                progress=False)
    ix = Index.open("hn")
    n = ix.faiss.ntotal
    q = quality(ix, n_queries=n)  # every item a query: no sampling to reproduce
    all_ids = np.sort(ix.select()["id"])
    x = ix.vectors(all_ids)
    truth = brute_force_ids(x, all_ids, np.arange(n), 20)
    s, got = ix.faiss.search(l2_normalize(x), 21)
    got, _ = drop_self(got, s, all_ids, 20)
    for r in (10, 20):
        mine = np.mean([len(set(got[i, :r]) & set(truth[i, :r])) / r for i in range(n)])
        assert abs(q["recall"][f"{r}-recall@{r}"] - mine) < 2e-3  # ties among equal scores may order differently
    assert q["bytes_per_vector"] == round(ix.layout.faiss.stat().st_size / n, 2)
    # kNN with exact search equals the eval command's weighted kNN (torch matmul + topk, another code path)
    run = evaluate(ix, methods=["knn"])
    ref = next(r for r in run.results if r.method == "knn").to_dict()["params"]["k_sweep_top1"]["20"]
    assert q["knn"]["top1_exact"] == pytest.approx(100 * ref, abs=0.25)
    assert q["knn"]["same_prediction_pct"] > 90


def test_cli_auto_and_index_quality(index_root):
    r = CliRunner()
    res = r.invoke(cli, ["-q", "index", "digits", "-b", "pixels:8", "-n", "a", "--workers", "0", "--index", "auto",
                         "--max-memory", "600kB", "--target-recall", "0.9", "--json"])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["index-quality", "a", "--queries", "200", "--json"])
    assert res.exit_code == 0, res.output
    q = json.loads(res.output)
    assert q["factory"].endswith("SQ8") and q["queries"]["n"] == 200 and "top1_approximate" in q["knn"]
    res = r.invoke(cli, ["index-quality", "a", "--queries", "200"])
    assert "10-recall@10" in res.output and "how" in res.output
    res = r.invoke(cli, ["index", "digits", "-b", "pixels:8", "-n", "b", "--max-memory", "1GB"])
    assert res.exit_code == 2 and "--max-memory applies to --index auto or --on-disk" in res.output
    res = r.invoke(cli, ["index", "digits", "-b", "pixels:8", "-n", "b", "--index", "auto", "--max-memory", "lots"])
    assert res.exit_code == 2 and "--max-memory 'lots' is not a size" in res.output  # a usage error, before any work


def test_parse_size():
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5g") == 1_500_000_000 and parse_size("1000") == 1000
    for bad in ("", "12 parsecs", "-1GB"):
        with pytest.raises(SpecError):
            parse_size(bad)


def test_reader_memory_maps_the_faiss_file(index_root):
    build_index(open_source("digits"), BuildConfig.of(name="m", backbone="pixels:4", num_workers=0), progress=False)
    ix = Index.open("m")
    x = ix.vectors()[:5]
    mapped = ix.faiss
    loaded = vindex.load_index(ix.layout.faiss, mmap=False)
    np.testing.assert_array_equal(vindex.search(mapped, x, 5)[1], vindex.search(loaded, x, 5)[1])


def test_tune_hnsw_efsearch_reaches_target_on_queries_outside_the_index():
    n, d = 6000, 32
    x, ids = clustered(n + 200, d, seed=3), np.arange(n + 200, dtype=np.int64)
    index = vindex.build_index([(ids[:n], x[:n])], d, "HNSW8")
    xn = l2_normalize(x)
    truth = np.argsort(-(xn[n:] @ xn[:n].T), axis=1)[:, :20]  # queries are not in the index; ids = positions
    cand = next(c for c in ann.candidates(100_000, d) if c.param == "efSearch")
    params, rec, sweep = ann.tune(index, cand, x[n:], truth, target=0.995)
    assert rec["10-recall@10"] >= 0.995 and len(sweep) > 1  # efSearch 20 was not enough: the sweep went on
    assert [s["efSearch"] for s in sweep] == [max(v, 20) for v in ann.EF_VALUES[:len(sweep)]]
    assert all(s["10-recall@10"] < 0.995 for s in sweep[:-1])  # and stopped at the smallest value that meets it
    mine = np.mean([len(set(index.search(xn[n:], 10)[1][i]) & set(truth[i, :10])) / 10 for i in range(200)])
    assert mine == pytest.approx(rec["10-recall@10"], abs=1e-9)  # the index keeps the tuned value
