import pytest
from scipy.stats import binomtest

from embedsearch.report.tables import mcnemar_exact


@pytest.mark.parametrize("b,c", [(0, 0), (3, 252), (10, 12), (0, 5), (40, 20)])
def test_mcnemar_exact_matches_scipy_binomial_test(b, c):
    want = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_compare_pairs_only_results_of_the_same_selections_and_seed(tmp_path):
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.core.errors import EvalError
    from embedsearch.evaluate import evaluate, save_run
    from embedsearch.reader import Index
    from embedsearch.report.tables import compare
    from embedsearch.sources.datasets import open_source

    src = open_source("digits")
    src.records = src.records[:400]
    for name, bb in (("a", "pixels:8"), ("b", "pixels:4")):
        build_index(src, BuildConfig.of(name=name, root=str(tmp_path), backbone=bb, num_workers=0), progress=False)
    a, b = Index.open("a", tmp_path), Index.open("b", tmp_path)
    full = {ix.name: evaluate(ix, methods=["prototypes"]) for ix in (a, b)}
    for ix in (a, b):
        save_run(ix, full[ix.name])
    narrow = "split = 'train' AND class_index IN (1, 2)"
    save_run(b, evaluate(b, methods=["prototypes"], train=narrow))  # b's newest result: another train selection
    (pair,) = compare([a, b])["pairs"]
    assert pair["train_where"] == "split = 'train'"  # like with like, not a's full run against b's narrow one
    assert pair["top1_b"] == full["b"].results[0].data["metrics"]["top1"]
    save_run(b, evaluate(b, methods=["prototypes"], seed=1))
    assert len(compare([a, b])["pairs"]) == 1  # a has no seed-1 result to pair with it
    c_src = open_source("digits")
    c_src.records = c_src.records[:400]
    build_index(c_src, BuildConfig.of(name="c", root=str(tmp_path), backbone="pixels:2", num_workers=0), progress=False)
    c = Index.open("c", tmp_path)
    save_run(c, evaluate(c, methods=["prototypes"], train=narrow))
    with pytest.raises(EvalError, match="with the same --train, --test and seed"):
        compare([a, c])
