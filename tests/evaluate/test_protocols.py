import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score, top_k_accuracy_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate import evaluate, load_selection
from embedsearch.evaluate.methods import knn as M_knn
from embedsearch.evaluate.methods import prototypes as M_proto
from embedsearch.evaluate.metrics import classification_report
from embedsearch.query import exact as M_exact
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    build_index(open_source("digits"), BuildConfig.of(name="d", root=str(root), backbone="pixels:8", num_workers=0),
                progress=False)
    return Index.open("d", root)


@pytest.fixture(scope="module")
def data(ix):
    tr = load_selection(ix, "split = 'train'", "train")
    te = load_selection(ix, "split = 'test'", "test")
    return tr, te


def _by(run, method, vote=None):
    return next(r.data for r in run.results if r.method == method and r.data["params"].get("vote") == vote)


def test_prototypes_match_numpy(ix, data):
    (_, ytr, xtr), (_, yte, xte) = data
    run = evaluate(ix, methods=["prototypes"])
    def n(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    protos = n(np.stack([n(xtr[ytr == c]).mean(0) for c in range(10)]))
    want = np.argmax(n(xte) @ protos.T, axis=1)
    assert run.results[0].data["predictions"]["pred"] == want.tolist()


def test_weighted_and_majority_knn_match_numpy(ix, data):
    (tr_ids, ytr, xtr), (_, yte, xte) = data
    run = evaluate(ix, methods=["knn"])
    def n(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    sims = n(xte) @ n(xtr).T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :20]
    s = np.take_along_axis(sims, nn, 1)
    w = np.exp(s / 0.07)
    w /= w.sum(1, keepdims=True)
    weighted = np.array([np.bincount(ytr[nn[i]], weights=w[i], minlength=10).argmax() for i in range(len(yte))])
    majority = np.array([np.bincount(ytr[nn[i]], minlength=10).argmax() for i in range(len(yte))])
    assert _by(run, "knn")["predictions"]["pred"] == weighted.tolist()
    assert _by(run, "knn", "majority")["predictions"]["pred"] == majority.tolist()


def test_knn_drops_self_match_when_queries_are_in_the_bank():
    x = np.eye(4, dtype=np.float32) + 0.01
    sims, idx = M_exact.knn_neighbours(x, x, 2, bank_ids=np.arange(4), q_ids=np.arange(4))
    assert not (idx == np.arange(4)[:, None]).any()


def _float64_topk(bank, q, k, drop_self=False, own=None):
    """Reference: float64 cosine of the float32-normalized vectors, ties to the lower bank position; `own[i]` ≥ 0
    (or the diagonal, with drop_self) is left out of row i."""
    s = l2_normalize(q).astype(np.float64) @ l2_normalize(bank).astype(np.float64).T
    if drop_self:
        np.fill_diagonal(s, -np.inf)
    for row, pos in enumerate(own if own is not None else []):
        if pos >= 0:
            s[row, pos] = -np.inf
    return np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]


@pytest.fixture(params=["faiss", "torch"])
def backend(request, monkeypatch):
    """Each exactness test runs on both CPU top-k backends (`cpu_backend` picks one by speed on each machine)."""
    monkeypatch.setattr(M_exact, "cpu_backend", lambda d, work=None: request.param)
    return request.param


def _near_tied_bank(rng, n=300, d=64):
    base = rng.normal(size=(n, d)).astype(np.float32)
    return np.concatenate([base] + [base + rng.normal(size=base.shape).astype(np.float32) * s
                                    for s in (1e-6, 3e-6, 1e-5, 1e-4)])


def test_knn_neighbour_sets_equal_float64_search_at_every_cutoff(backend):
    import faiss

    rng = np.random.default_rng(1)
    bank, q = _near_tied_bank(rng), rng.normal(size=(500, 64)).astype(np.float32)
    ks = (1, 3, 10, 50)
    sims, idx = M_exact.knn_neighbours(bank, q, 50, ks=ks)
    ref = _float64_topk(bank, q, 50)
    plain = faiss.knn(l2_normalize(q), l2_normalize(bank), 50, metric=faiss.METRIC_INNER_PRODUCT)[1]
    for k in ks:
        ours = [set(r) for r in idx[:, :k]]
        exact = [set(r) for r in ref[:, :k]]
        assert ours == exact, k
    # the data does contain float32 near-ties that change a neighbour set (else this test could not fail)
    assert any(set(a) != set(b) for k in ks for a, b in zip(plain[:, :k], ref[:, :k]))
    s64 = np.take_along_axis(l2_normalize(q).astype(np.float64) @ l2_normalize(bank).astype(np.float64).T, idx, 1)
    assert np.abs(sims - s64).max() <= M_exact.float32_dot_error(64)


def test_knn_ties_that_reach_the_candidate_list_end_widen_the_list_for_those_rows(monkeypatch, backend):
    rows = []
    wide = M_exact._widen
    monkeypatch.setattr(M_exact, "_widen", lambda b, q, *a, **kw: rows.append(len(q)) or wide(b, q, *a, **kw))
    rng = np.random.default_rng(2)
    bank = np.repeat(rng.normal(size=(20, 32)).astype(np.float32), 60, axis=0)  # 60 identical copies each
    q = rng.normal(size=(40, 32)).astype(np.float32)
    _, idx = M_exact.knn_neighbours(bank, q, 10, ks=(1, 5, 10))
    assert (idx == _float64_topk(bank, q, 10)).all()  # copies tie exactly: lower bank position first
    _, idx = M_exact.knn_neighbours(bank, bank, 5, bank_ids=np.arange(len(bank)), q_ids=np.arange(len(bank)))
    assert (idx == _float64_topk(bank, bank, 5, drop_self=True)).all()
    assert sum(rows) > 0  # the wider search ran


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_knn_sets_equal_float64_on_any_small_bank(data):
    """Duplicates, exact ties, kmax up to the bank size, queries in and out of the bank: every cut-off's set equals
    a float64 search's (ties to the lower bank position)."""
    n = data.draw(st.integers(1, 30))
    d = data.draw(st.integers(1, 6))
    grid = st.integers(-2, 2)
    bank = np.array(data.draw(st.lists(st.lists(grid, min_size=d, max_size=d), min_size=n, max_size=n)), np.float32)
    bank += np.float32(1e-7) * data.draw(st.sampled_from([0, 1])) * np.arange(n * d, dtype=np.float32).reshape(n, d)
    bank[np.abs(bank).sum(axis=1) == 0, 0] = 1  # no zero vectors
    in_bank = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
    extra = np.array(data.draw(st.lists(st.lists(grid, min_size=d, max_size=d), min_size=1, max_size=4)), np.float32)
    extra[np.abs(extra).sum(axis=1) == 0, 0] = 1
    q = np.concatenate([bank[in_bank], extra])
    q_ids = np.concatenate([np.array(in_bank, np.int64), np.full(len(extra), -1)])
    kmax = data.draw(st.integers(1, max(n - 1, 1)))
    ks = sorted(set(data.draw(st.lists(st.integers(1, kmax), max_size=3))) | {kmax})
    ref = _float64_topk(bank, q, n, own=q_ids)
    for backend in ("faiss", "torch"):  # both CPU top-k backends
        M_exact.CPU_BACKEND[d] = backend
        try:
            _, idx = M_exact.knn_neighbours(bank, q, kmax, bank_ids=np.arange(n), q_ids=q_ids, ks=ks)
        finally:
            M_exact.CPU_BACKEND.pop(d)
        for k in ks:
            kk = min(k, idx.shape[1])
            assert [set(r) for r in idx[:, :kk]] == [set(r) for r in ref[:, :kk]], (backend, k)


def test_weighted_knn_vote_equals_float64_vote_on_near_tied_neighbours(backend):
    rng = np.random.default_rng(4)
    bank, q = _near_tied_bank(rng, n=400, d=48), rng.normal(size=(2000, 48)).astype(np.float32)
    labels = rng.integers(0, 7, len(bank))  # near-identical copies carry different labels
    k = 4
    sims, idx = M_exact.knn_neighbours(bank, q, k)
    ours = M_knn.knn_scores(sims, labels[idx], k, 7, M_knn.KNN_T, M_exact.ExactSims(bank, q, idx)).argmax(1)
    plain = M_knn.knn_scores(sims, labels[idx], k, 7, M_knn.KNN_T).argmax(1)
    ref_idx = _float64_topk(bank, q, k)
    s64 = np.take_along_axis(l2_normalize(q).astype(np.float64) @ l2_normalize(bank).astype(np.float64).T, ref_idx, 1)
    w = np.exp((s64 - s64[:, :1]) / M_knn.KNN_T)
    ref = np.array([np.bincount(labels[r], weights=wr, minlength=7).argmax() for r, wr in zip(ref_idx, w)])
    assert (ours == ref).all()
    assert (plain != ref).any()  # float32 similarities alone do flip some of these votes


def test_cpu_backend_is_measured_once_and_is_one_of_the_two():
    M_exact.CPU_BACKEND.pop(24, None)
    assert M_exact.cpu_backend(24, work=1000) == "faiss" and 24 not in M_exact.CPU_BACKEND  # too small to time
    first = M_exact.cpu_backend(24)
    assert first in ("faiss", "torch") and M_exact.CPU_BACKEND[24] == first
    assert M_exact.cpu_backend(24, work=1000) == first


def test_torch_top_k_keeps_full_float32_products_when_precision_was_lowered(monkeypatch):
    """A user's `set_float32_matmul_precision("medium")` would let CPU products run in bfloat16, beyond the error
    bound the certification relies on: the torch backend restores full float32 for its products, and after."""
    import torch

    monkeypatch.setattr(M_exact, "cpu_backend", lambda d, work=None: "torch")
    rng = np.random.default_rng(1)
    bank, q = _near_tied_bank(rng), rng.normal(size=(200, 64)).astype(np.float32)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        _, idx = M_exact.knn_neighbours(bank, q, 10, ks=(1, 10))
        assert torch.get_float32_matmul_precision() == "medium"  # the user's setting is left as it was
    finally:
        torch.set_float32_matmul_precision(prev)
    ref = _float64_topk(bank, q, 10)
    for k in (1, 10):
        assert [set(r) for r in idx[:, :k]] == [set(r) for r in ref[:, :k]], k


@pytest.mark.parametrize("how", ["faiss", "torch"])
def test_float32_dot_error_bounds_faiss_inner_products(how):
    import faiss

    rng = np.random.default_rng(3)
    for d in (8, 384, 1536):
        b, q = l2_normalize(rng.normal(size=(2000, d)) + 1.0), l2_normalize(rng.normal(size=(64, d)) + 1.0)
        s32, i = (faiss.knn(q, b, 100, metric=faiss.METRIC_INNER_PRODUCT) if how == "faiss"
                  else M_exact._torch_topk(b, q, 100))
        s64 = np.take_along_axis(q.astype(np.float64) @ b.astype(np.float64).T, i, 1)
        assert 0 < np.abs(s32 - s64).max() <= M_exact.float32_dot_error(d)


def test_linear_probe_within_half_a_point_of_sklearn(ix, data):
    (_, ytr, xtr), (_, yte, xte) = data
    r = evaluate(ix, methods=["linear"]).results[0].data
    ref = LogisticRegression(C=r["params"]["C"], max_iter=5000, tol=1e-8).fit(xtr.astype(np.float64), ytr)
    assert abs(r["metrics"]["top1"] - (ref.predict(xte) == yte).mean()) <= 0.005


@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_the_blocked_cpu_pass_solves_the_same_problem(monkeypatch, loss):
    """fit_l2's CPU pass over blocks of rows (W padded to 16 columns, a last block shorter than the others) gives
    the loss and gradients of the two whole products it replaces: L-BFGS takes the same iterates (to rounding)."""
    import torch

    from embedsearch.evaluate.methods import linear as M_lin

    rng = np.random.default_rng(0)
    n, d, k = 2500, 40, 5
    x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=(k, d))[np.arange(n) % k]).astype(np.float32)
    y = torch.from_numpy(np.arange(n) % k)
    pre = M_lin.Preconditioned(x, "cpu")
    targets = 2 * torch.nn.functional.one_hot(y, k).double() - 1
    lg = (M_lin.softmax_ce(torch.nn.functional.one_hot(y, k).double()) if loss == "softmax"
          else M_lin.squared_hinge(targets))
    fits = {}
    for rows in (700, n + 1):  # 700: four blocks, the last of 400 rows; n + 1: one product over all rows
        monkeypatch.setattr(M_lin, "FUSED_ROWS", rows)
        fits[rows] = M_lin.fit_l2(pre, lg, k, 10.0, 0.2, max_iter=30, tol=0)
    (W1, b1, i1), (W2, b2, i2) = fits.values()
    assert i1 == i2 == 30 and W1.abs().max() > 0.1
    assert torch.allclose(W1, W2, atol=1e-9, rtol=1e-8) and torch.allclose(b1, b2, atol=1e-9, rtol=1e-8)


def test_svc_probes_within_half_a_point_of_sklearn(ix, data):
    (_, ytr, xtr), (_, yte, xte) = data
    run = evaluate(ix, methods=["svc"])
    rbf = next(r.data for r in run.results if r.data["variant"] == "SVC rbf")
    sc = StandardScaler().fit(xtr)
    ref = SVC(kernel="rbf", gamma="scale").fit(sc.transform(xtr), ytr)
    assert abs(rbf["metrics"]["top1"] - (ref.predict(sc.transform(xte)) == yte).mean()) <= 0.005


def test_mlp_probe_learns(ix):
    r = evaluate(ix, methods=["mlp"]).results[0].data
    # an independent MLP differs in its random stream; the probe must at least match the linear protocol's regime
    assert r["metrics"]["top1"] > 0.93 and 1 <= r["params"]["epochs"] <= 200


def test_hyper_parameters_never_read_the_test_selection(ix):
    a = evaluate(ix, methods=["linear", "svc", "mlp", "knn"], test="split = 'test' AND class_index < 5")
    b = evaluate(ix, methods=["linear", "svc", "mlp", "knn"], test="split = 'test' AND class_index >= 5")
    for ra, rb in zip(a.results, b.results, strict=False):
        pa = {k: v for k, v in ra.data["params"].items() if not k.startswith("k_sweep")}
        pb = {k: v for k, v in rb.data["params"].items() if not k.startswith("k_sweep")}
        assert pa == pb, ra.method


def test_train_and_test_must_be_disjoint(ix):
    from embedsearch.core.errors import EvalError

    with pytest.raises(EvalError, match="share"):
        evaluate(ix, methods=["knn"], train="split = 'train'", test="class_index = 1")


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 300)
    y[y == 5] = 4  # class 5 absent from test: balanced accuracy must average over present classes only
    scores = rng.normal(size=(300, 6)) + 2.0 * np.eye(6)[y]
    m, pred = classification_report(y, scores, [f"c{i}" for i in range(6)], seed=0)
    assert m["top1"] == pytest.approx((pred == y).mean())
    assert m["top3"] == pytest.approx(top_k_accuracy_score(y, scores, k=3, labels=range(6)))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=range(6)))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["balanced_accuracy"] != pytest.approx(m["top1"])
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=np.unique(y), average="macro"))
    lo, hi = m["ci95"]["top1"]
    assert lo < m["top1"] < hi and hi - lo < 0.15
    assert classification_report(y, scores, [f"c{i}" for i in range(6)], seed=0)[0]["ci95"] == m["ci95"]
    two, _ = classification_report(y % 2, scores[:, :2], ["a", "b"])
    assert "top3" not in two and "top5" not in two


def test_topk_never_credits_a_class_that_cannot_be_predicted():
    from embedsearch.evaluate.metrics import topk_correct

    scores = np.array([[0.9, 0.5, -np.inf, -np.inf, -np.inf],  # true class 2 sits at rank 3 only by tie order
                       [0.9, 0.5, -np.inf, -np.inf, -np.inf],  # true class 1 is ranked 2nd: a real top-3 hit
                       [0.2, 0.1, 0.0, 0.0, 0.0]])  # a zero score is a score: ties broken by class index
    y = np.array([2, 1, 2])
    assert topk_correct(scores, y, 3).tolist() == [False, True, True]
    assert topk_correct(scores, y, 1).tolist() == [False, False, False]


def test_test_classes_absent_from_train_are_reported_and_never_top_k_hits(ix):
    from embedsearch.report.tables import markdown_run

    run = evaluate(ix, methods=["prototypes", "knn", "linear"], train="split = 'train' AND class_index IN (1, 2)")
    te = load_selection(ix, "split = 'test'", "test")[1]
    reachable = np.isin(te, [1, 2]).mean()  # the best any classifier trained on classes 1 and 2 can do
    for r in run.results:
        m = r.data["metrics"]
        assert m["top1"] <= m["top3"] <= m["top5"] <= reachable + 1e-12, (r.method, r.data["variant"])
        assert set(r.data["predictions"]["pred"]) <= {1, 2}
    unseen = run.results[0].data["test"]["classes_without_train"]
    assert set(unseen) == {str(c) for c in range(10)} - {"1", "2"}
    assert sum(unseen.values()) == int((~np.isin(te, [1, 2])).sum())
    assert f"{sum(unseen.values())} test items belong to 8 classes with no train item" in markdown_run(run, ix)


def test_topk_by_rank_counting_equals_a_stable_sort():
    """top-k is counted (classes above the true one, plus tied ones with a lower index) instead of sorted; on
    scores full of ties and -inf it must equal the stable-sort definition exactly."""
    from embedsearch.evaluate.metrics import topk_correct

    rng = np.random.default_rng(0)
    for _ in range(50):
        n, c = int(rng.integers(1, 40)), int(rng.integers(1, 30))
        scores = rng.integers(0, 4, (n, c)).astype(np.float64)  # few distinct values: many ties
        scores[rng.random((n, c)) < 0.2] = -np.inf
        y = rng.integers(0, c, n)
        for k in (1, 3, 5):
            top = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, c)]
            ref = (top == y[:, None]).any(axis=1) & np.isfinite(scores[np.arange(n), y])
            assert topk_correct(scores, y, k).tolist() == ref.tolist()


def test_knn_streamed_bank_gives_the_same_neighbours_as_the_whole_bank(monkeypatch, backend):
    """A bank above BANK_BYTES is normalized and searched a chunk at a time (bounded memory): same sets, same sims."""
    rng = np.random.default_rng(5)
    bank, q = _near_tied_bank(rng, n=200, d=32), rng.normal(size=(300, 32)).astype(np.float32)
    ks = (1, 5, 20)
    whole = M_exact.knn_neighbours(bank.astype(np.float16), q, 20, ks=ks)
    monkeypatch.setattr(M_exact, "BANK_BYTES", 1)
    monkeypatch.setattr(M_exact, "BANK_CHUNK", 97)  # chunks that do not divide the bank
    assert M_exact.Bank(bank).whole is None
    streamed = M_exact.knn_neighbours(bank.astype(np.float16), q, 20, ks=ks)
    ref = _float64_topk(bank.astype(np.float16).astype(np.float32), q, 20)
    for k in ks:
        assert [set(r) for r in streamed[1][:, :k]] == [set(r) for r in whole[1][:, :k]] == \
               [set(r) for r in ref[:, :k]], k
    assert np.allclose(streamed[0], whole[0], atol=M_exact.float32_dot_error(32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_prototypes_equal_a_float64_scatter_of_the_normalized_vectors(monkeypatch, dtype):
    # blocks of 333 rows, float32 partial sums flushed every 999: both boundaries fall inside the data
    monkeypatch.setattr(M_proto, "BLOCK_BYTES", 333 * 4 * 48)
    monkeypatch.setattr(M_proto, "FLUSH_ROWS", 999)
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(5000, 48)) + 1).astype(dtype)
    if dtype == np.float32:  # rows whose squared norm float32 cannot hold take l2_normalize's careful path
        x[1000] *= 1e25
        x[4000] *= 1e-22
    y = rng.integers(0, 7, 5000)
    protos, has = M_proto.prototypes(x, y, 9)
    s = np.zeros((9, 48))
    np.add.at(s, y, l2_normalize(x).astype(np.float64))
    ref = l2_normalize(s / np.maximum(np.bincount(y, minlength=9), 1)[:, None])
    assert has.tolist() == [True] * 7 + [False] * 2
    assert np.abs(protos - ref).max() < 1e-6
    again, _ = M_proto.prototypes(l2_normalize(x), y, 9, normalized=True)
    assert np.abs(again - ref).max() < 1e-6


def test_linear_svm_matches_sklearn_linearsvc_at_its_chosen_c(ix, data):
    from sklearn.svm import LinearSVC

    (_, ytr, xtr), (_, yte, xte) = data
    r = next(r.data for r in evaluate(ix, methods=["svc"]).results if r.data["variant"] == "linear SVM")
    sc = StandardScaler().fit(xtr)
    ref = LinearSVC(C=r["params"]["C"], max_iter=20000, tol=1e-6).fit(sc.transform(xtr), ytr)
    assert r["params"]["C"] in [float(c) for c in np.logspace(-4, 1, 6)]
    assert abs(r["metrics"]["top1"] - (ref.predict(sc.transform(xte)) == yte).mean()) <= 0.005


def test_svc_size_policy_switches_to_a_labelled_nystroem_approximation():
    from embedsearch.evaluate.methods import svc as M_svc

    assert M_svc.rbf_policy("auto", 5_000, 1_000, 384)[0]  # seconds: exact
    exact, why = M_svc.rbf_policy("auto", 50_000, 10_000, 2_048)  # ~40 min estimated: approximated, and says so
    assert not exact and "Nyström" in why and "min" in why
    assert M_svc.rbf_policy("exact", 50_000, 10_000, 2_048)[0]
    assert not M_svc.rbf_policy("nystroem", 100, 10, 8)[0]
    with pytest.raises(Exception, match="svc policy 'fast'"):
        M_svc.rbf_policy("fast", 100, 10, 8)


def test_nystroem_svc_is_named_as_an_approximation_and_close_to_the_exact_one(ix):
    exact = next(r.data for r in evaluate(ix, methods=["svc"]).results if r.data["variant"] == "SVC rbf")
    run = evaluate(ix, methods=["svc"], svc="nystroem")
    approx = next(r.data for r in run.results if r.data["variant"].startswith("SVC rbf ≈ Nyström"))
    p = approx["params"]
    assert "Nyström" in p["approximation"] and "landmarks" in p["approximation"] and "asked for" in p["policy"]
    assert p["C"] in [float(c) for c in np.logspace(-4, 1, 6)] and "held-out" in p["selection"]
    # digits (1,437 train items): the Nyström map has every train item as a landmark, so it is close to exact
    assert abs(approx["metrics"]["top1"] - exact["metrics"]["top1"]) <= 0.03


def _fewshot_reference(xtr, ytr, xte, yte, C, seed, T, n_seeds, k):
    """Each n-shot sample drawn as documented (per seed one random order of each class, its first n) and searched
    on its own: float64 top-k (ties to the lower position) and a float64 weighted vote; prototypes of the sample."""
    from embedsearch.evaluate.methods.fewshot import prototype_scores, prototypes

    counts = np.bincount(ytr, minlength=C)
    largest = counts.max()
    out = {}
    for n in [n for n in (2 ** i for i in range(20)) if n < largest] + [largest]:
        for s in range(n_seeds if n < largest else 1):
            key = np.random.default_rng(seed + s).random(len(ytr))
            pick = np.sort(np.concatenate([np.flatnonzero(ytr == c)[np.argsort(key[ytr == c], kind="stable")[:n]]
                                           for c in range(C)]))
            xb, yb = xtr[pick], ytr[pick]
            kk = min(k, len(yb))
            # each pair's float64 dot on its own (a BLAS product may round identical columns differently)
            s64 = (l2_normalize(xte).astype(np.float64)[:, None] * l2_normalize(xb).astype(np.float64)).sum(-1)
            idx = np.lexsort((np.broadcast_to(np.arange(len(yb)), s64.shape), -s64), axis=1)[:, :kk]
            s64 = np.take_along_axis(s64, idx, 1)
            knn = (M_knn.knn_scores(s64, yb[idx], kk, C, T).argmax(1) == yte).mean()
            protos, has = prototypes(xb, yb, C)
            proto = (prototype_scores(protos, has, xte).argmax(1) == yte).mean()
            out.setdefault(n, []).append((proto, knn))
    return out


@pytest.mark.parametrize("streamed", [False, True])
def test_fewshot_curve_equals_searching_each_sample_on_its_own(monkeypatch, streamed):
    """One similarity block per test block, every sample a top-k over a prefix of its seed's columns: the same
    hits as a float64 search of each sample, on near-duplicates, exact copies (ties) and unequal classes."""
    from embedsearch.evaluate.methods import fewshot as M_fs

    rng = np.random.default_rng(7)
    base = _near_tied_bank(rng, n=60, d=24)  # 300 rows: 60 points and 4 near-copies of each
    xtr = np.concatenate([base, np.repeat(base[:3], 40, axis=0)])  # and 41 exact copies of three
    ytr = rng.integers(0, 5, len(xtr))
    ytr[(ytr == 4) & (rng.random(len(ytr)) < 0.8)] = 3  # a small class
    xte = np.concatenate([rng.normal(size=(150, 24)), base[:50] + 1e-6]).astype(np.float32)
    yte = rng.integers(0, 5, len(xte))
    if streamed:  # the bank normalized a chunk at a time, several test blocks, lists widened at exact ties
        monkeypatch.setattr(M_exact, "BANK_BYTES", 1)
        monkeypatch.setattr(M_exact, "BANK_CHUNK", 71)
        monkeypatch.setattr(M_fs, "SCORE_BYTES", 4 * len(xtr) * 37)
        monkeypatch.setattr(M_fs, "MIN_ROWS", 1)
    curve = M_fs.fewshot_curve(xtr, ytr, xte, yte, 5, seed=3, knn_t=0.07, n_seeds=3, k=20)
    ref = _fewshot_reference(xtr, ytr, xte, yte, 5, 3, 0.07, 3, 20)
    assert [r["shots"] for r in curve][:-1] == list(ref)[:-1] and curve[-1]["shots"] == "all"
    for row, (n, got) in zip(curve, ref.items(), strict=True):
        assert row["seeds"] == len(got), n
        assert row["prototypes_mean"] == pytest.approx(np.mean([p for p, _ in got]), abs=1e-12), n
        assert row["knn_mean"] == pytest.approx(np.mean([q for _, q in got]), abs=1e-12), n
        assert row["knn_std"] == pytest.approx(np.std([q for _, q in got]), abs=1e-12), n
