"""Degenerate selections never give a number computed from nothing: with one train item per class nothing can be
held out to choose a hyper-parameter, so the probes that need one are skipped with their reason, and every other
result of the run still lands."""

import json

import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig, build_index
from embedsearch.cli import cli
from embedsearch.evaluate import evaluate
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source

ONE_PER_CLASS = None  # `id IN (…)`: the first train item of each class, set by the fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    global ONE_PER_CLASS
    r = tmp_path_factory.mktemp("degenerate")
    build_index(open_source("digits"), BuildConfig.of(name="d", root=str(r), backbone="pixels:4", num_workers=0),
                progress=False)
    ix = Index.open("d", r)
    ids = [i for (i,) in ix.sql("SELECT min(id) FROM items WHERE split = 'train' GROUP BY label")[1]]
    ix.close()
    ONE_PER_CLASS = f"id IN ({', '.join(map(str, ids))})"
    return r


def test_one_train_item_per_class_skips_what_needs_a_held_out_part_and_keeps_the_rest(root):
    ix = Index.open("d", root)
    run = evaluate(ix, train=ONE_PER_CLASS, methods=["prototypes", "knn", "linear", "svc", "mlp", "fewshot"])
    got = {r.data["variant"] for r in run.results}
    assert {"nearest class prototype (cosine)", "SVC rbf", "prototypes and kNN vs shots per class"} <= got
    assert {"logistic regression (L-BFGS)", "linear SVM"} & got == set() and not any("MLP" in v for v in got)
    skipped = {(s["method"], s["variant"]) for s in run.skipped}
    assert skipped == {("linear", None), ("svc", "linear SVM"), ("mlp", None)}
    assert all("no train item can be held out" in s["reason"] for s in run.skipped)
    for r in run.results:
        m = r.data["metrics"]
        assert not m or 0 <= m["top1"] <= 1  # every number shown is a real one


def test_the_cli_says_what_it_skipped_and_saves_what_ran(root):
    r = CliRunner().invoke(cli, ["eval", "d", "--root", str(root), "--train", ONE_PER_CLASS, "--methods",
                                 "prototypes,linear", "--json"])
    assert r.exit_code == 0, r.output
    assert "linear probe: no train item can be held out" in r.output
    ix = Index.open("d", root)
    methods = [json.loads(x)["method"] for (x,) in ix.sql("SELECT result FROM results")[1]]
    assert "prototypes" in methods and "linear" not in methods


def test_many_classes_give_a_sparse_confusion_and_a_readable_report(tmp_path):
    """120 classes: past the dense limit, the result keeps the non-zero cells (at most one per test item) and the
    HTML lists the top confusions and the lowest-recall classes instead of drawing 14,400 cells."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsearch.evaluate import run_and_commit
    from embedsearch.evaluate.metrics import CONFUSION_DENSE_MAX
    from embedsearch.report.html import BARS_MAX
    from embedsearch.report.tables import write_eval_report

    C = 120
    rng = np.random.default_rng(0)
    label = np.repeat(np.arange(C), 3)
    vec = rng.normal(size=(C, 8))[label] + 0.8 * rng.normal(size=(3 * C, 8))
    pq.write_table(pa.table({"id": np.arange(3 * C), "label": [f"k{c:03d}" for c in label],
                             "split": ["train", "train", "test"] * C}), tmp_path / "m.parquet")
    np.save(tmp_path / "v.npy", vec.astype(np.float32))
    build_index(open_source(str(tmp_path / "m.parquet"), require_paths=False),
                BuildConfig.of(name="many", root=str(tmp_path), vectors=str(tmp_path / "v.npy"), dtype="float32"),
                progress=False)
    ix = Index.open("many", tmp_path)
    run = run_and_commit(ix, methods=["prototypes", "linear"])
    _, html_path = write_eval_report(ix, run, str(tmp_path / "r.html"))
    assert C > CONFUSION_DENSE_MAX
    for r in run.results:
        conf = r.data["confusion"]
        assert conf["format"] == "sparse" and "matrix" not in conf
        assert sum(n for _, _, n in conf["cells"]) == C and len(conf["cells"]) <= C
        wrong = sum(n for t, q, n in conf["cells"] if t != q)
        assert wrong == round((1 - r.data["metrics"]["top1"]) * C)
    page = open(html_path).read()
    assert "the most frequent confusions" in page and f"the {BARS_MAX} lowest of {C} classes" in page
    assert page.count("<rect") < 2000  # bars and charts, no 120×120 grid


def test_a_mistyped_stored_result_is_one_line_naming_the_field(root, tmp_path):
    """Stored results are read back through `from_record` (`StoredResult`): a catalog row whose train selection is
    not a string was a TypeError or KeyError inside `report`/`compare`; now one line names the field."""
    import shutil

    from embedsearch.core.errors import IndexStateError
    from embedsearch.evaluate import ResultStore
    from embedsearch.store.catalog import Catalog

    shutil.copytree(root / "d", tmp_path / "d")
    ix = Index.open("d", tmp_path)
    Catalog(ix.layout.catalog).add_result("r1", "knn", 1, {"run_id": "r1", "method": "knn", "variant": "v",
                                                            "train": {"where": 3, "n": 1},
                                                            "test": {"where": "split = 'test'", "n": 1}})
    ix.close()
    with pytest.raises(IndexStateError, match="^stored result of index d: field train.where must be str, not int 3$"):
        ResultStore(ix).latest()
    r = CliRunner().invoke(cli, ["report", "d", "--root", str(tmp_path)])
    assert r.exit_code == 1 and "field train.where must be str" in r.output and "Traceback" not in r.output
