"""Issue #28, the evaluate side: insight columns never replace a source's own (F8), eval reuses only what
is provably the same and probes/ follows the latest run (F9), a one-class train selection is a recorded
skip (F13), and the small refusals and warnings of F17 (label-issues' small classes, outliers' -k,
`--methods "knn, linear"`).

Indexes here hold imported vectors (a CSV manifest + a .npy): built in about a second, no backbone, no
images."""

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig, build_index
from embedsearch.cli import cli
from embedsearch.core.errors import EvalError, QueryError, SourceError
from embedsearch.evaluate import insight as I
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source

# manifest columns spelled like the computed ones, holding the user's own data (F8)
USER_COLUMNS = ("dup_rank", "outlier", "leak_of", "label_issue", "map_pca_x", "Dup_Group")


def _build(root, name="u", n=60, classes=("a", "b", "c"), extra=None, user_columns=USER_COLUMNS, seed=0):
    """n items of len(classes) classes (32-d, a class centre plus as much noise: distinct items), every 4th
    in test; item 5 an exact copy of item 4 (a duplicate pair across test/train, so a leak); `extra`:
    {label: count} more train items of small classes."""
    rng = np.random.default_rng(seed)
    labels = [classes[i % len(classes)] for i in range(n)]
    for lab, cnt in (extra or {}).items():
        labels += [lab] * cnt
    names = sorted(set(labels))
    centers = rng.normal(size=(len(names), 32))
    vec = centers[[names.index(lab) for lab in labels]] + rng.normal(size=(len(labels), 32))
    vec[5] = vec[4]
    head = ["id", "label", "split", *user_columns]
    lines = [",".join(head)]
    for i, lab in enumerate(labels):
        split = "test" if i < n and i % 4 == 0 else "train"
        lines.append(",".join([str(i), lab, split, *(f"{c.lower()}-user-{i}" for c in user_columns)]))
    (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    np.save(root / f"{name}.npy", vec.astype(np.float32))
    build_index(open_source(str(root / f"{name}.csv"), require_paths=False),
                BuildConfig.of(name=name, root=str(root), vectors=str(root / f"{name}.npy"), dtype="float32"),
                progress=False)
    return Index.open(name, root)


# --------------------------------------------------------------------------------------------- F8


def _user_values(ix) -> dict:
    cols = ", ".join(USER_COLUMNS)
    _, rows = ix.sql(f"SELECT id, {cols} FROM items ORDER BY id")
    return {r[0]: r[1:] for r in rows}


def test_insight_commands_store_their_columns_beside_the_sources_never_over_them(tmp_path):
    ix = _build(tmp_path)
    before = _user_values(ix)
    assert before[4] == tuple(f"{c.lower()}-user-4" for c in USER_COLUMNS)
    dup = I.find_duplicates(ix)
    leaks = I.find_leaks(ix)
    issues = I.find_label_issues(ix, methods=("knn",))
    out = I.find_outliers(ix, k=3)
    ix.close()
    ix = Index.open("u", tmp_path)
    assert _user_values(ix) == before  # every user value as it was, case-insensitive namesakes included

    # computed values under their own names: the README's examples, whatever the source's columns
    _, rows = ix.sql("SELECT id, insight_dup_group, insight_dup_rank FROM items "
                     "WHERE insight_dup_group IS NOT NULL ORDER BY id")
    assert rows == [(4, 4, 0), (5, 4, 1)] and dup["groups"][0]["ids"] == [4, 5]
    one_each = ix.select("coalesce(insight_dup_rank, 0) = 0")["id"]
    assert 4 in one_each and 5 not in one_each and len(one_each) == 59
    clean_test = ix.select("split = 'test' AND insight_leak_of IS NULL")["id"]
    assert 4 not in clean_test and len(clean_test) == 14 and leaks["leaks"][0]["test_id"] == 4
    _, rows = ix.sql("SELECT id, insight_label_issue, insight_suggested_label, insight_outlier FROM items "
                     "ORDER BY id")
    by_issue = {r["id"]: r["score"] for r in issues["issues"]}
    by_outlier = {r["id"]: r["score"] for r in out["outliers"]}
    assert all(abs(r[1] - by_issue[r[0]]) < 1e-6 and r[2] in "abc" and abs(r[3] - by_outlier[r[0]]) < 1e-6
               for r in rows)
    from embedsearch.report.map import projection

    proj = projection(ix, method="pca")
    ix.close()
    ix = Index.open("u", tmp_path)
    got = ix.items_by_id(proj["ids"], "id, insight_map_pca_x, insight_map_pca_y")
    xy = [[got[int(i)]["insight_map_pca_x"], got[int(i)]["insight_map_pca_y"]] for i in proj["ids"]]
    assert np.allclose(xy, proj["xy"])
    assert _user_values(ix) == before


def test_the_map_reads_its_own_columns_not_the_sources_namesakes(tmp_path):
    """A source column `map_pca_x` / `outlier` is the user's: the map's reuse and its colours use the computed
    ones (report/map.py reads them through `insight.column`)."""
    from embedsearch.report.map import _colour_values, projection

    ix = _build(tmp_path)
    before = _user_values(ix)
    first = projection(ix, method="pca")
    ix.close()
    ix = Index.open("u", tmp_path)
    again = projection(ix, method="pca")
    assert again["reused_from"] == first["run_id"] and np.allclose(again["xy"], first["xy"])
    out = I.find_outliers(ix, k=3)
    ix.close()
    ix = Index.open("u", tmp_path)
    values, meaning = _colour_values(ix, first["ids"], "outlier")
    want = {r["id"]: r["score"] for r in out["outliers"]}
    assert np.allclose(values, [want[int(i)] for i in first["ids"]]) and "outlier" in meaning
    assert _user_values(ix) == before


def test_a_source_column_with_the_computed_prefix_is_refused_naming_it(tmp_path):
    # the manifest reader refuses it first, naming the file; the catalog would refuse it too (any source kind)
    with pytest.raises(SourceError, match="u.csv: column 'Insight_Score': names starting with 'insight_'"):
        _build(tmp_path, user_columns=("Insight_Score",))


def test_a_computed_column_the_source_already_has_is_never_overwritten(tmp_path):
    """An index built before the prefix was reserved may hold a source column `insight_outlier`: refused, kept
    as it is."""
    from embedsearch.store.catalog import Catalog

    ix = _build(tmp_path, user_columns=())
    with Catalog(ix.layout.catalog).write() as con:
        con.execute("ALTER TABLE items ADD COLUMN insight_outlier VARCHAR DEFAULT 'mine'")
    ix.close()
    ix = Index.open("u", tmp_path)
    with pytest.raises(Exception, match="came from the source"):
        I.find_outliers(ix, k=3)
    ix.close()
    assert Index.open("u", tmp_path).sql("SELECT DISTINCT insight_outlier FROM items")[1] == [("mine",)]


def test_where_names_a_computed_column_without_its_prefix_or_mixes_types_in_one_clear_line(tmp_path):
    ix = _build(tmp_path, user_columns=())
    with pytest.raises(QueryError, match=r"unknown column 'dup_rank' \(`embedsearch duplicates` stores it as "
                                         r"insight_dup_rank"):
        ix.select("coalesce(dup_rank, 0) = 0")
    with pytest.raises(QueryError) as e:  # a type error, not a column: it said "unknown column '+'"
        ix.select("split + 1 = 2")
    assert "unknown column" not in str(e.value) and "+(VARCHAR, INTEGER_LITERAL)" in str(e.value)


# --------------------------------------------------------------------------------------------- F9


def _eval(ix, **kw):
    from embedsearch.evaluate import run_and_commit
    from embedsearch.report.tables import write_eval_report

    run = run_and_commit(ix, **kw)
    write_eval_report(ix, run)  # what `eval` does after the run
    return run


def _probe_meta(ix, method="prototypes") -> dict:
    return json.loads((ix.layout.probes / f"{method}.json").read_text())


def test_eval_reuses_only_the_same_code_selection_and_parameters(tmp_path, monkeypatch):
    import embedsearch.evaluate.runner as E

    ix = _build(tmp_path, user_columns=())
    first = _eval(ix, methods=["prototypes", "knn"])
    same = _eval(ix, methods=["prototypes", "knn"])
    assert {t["method"]: t["reused_from"] for t in same.timings} == {"prototypes": first.run_id,
                                                                     "knn": first.run_id}
    # the same numbers from other code: the version string alone let an edited method reuse an old result
    monkeypatch.setattr(E, "code_digest", lambda: "another build of embedsearch")
    edited = _eval(ix, methods=["prototypes"])
    assert edited.timings[0]["reused_from"] is None
    monkeypatch.undo()
    # the same ids written another way: the stored result would carry the other predicate
    spaced = _eval(ix, methods=["prototypes"], train="split='train'")
    assert spaced.timings[0]["reused_from"] is None
    assert spaced.results[0].data["train"]["where"] == "split='train'"
    knn_t = _eval(ix, methods=["knn"], knn_t=0.5)  # a method parameter
    assert knn_t.timings[0]["reused_from"] is None


def test_after_a_reuse_probes_hold_the_probe_of_that_very_result(tmp_path):
    """eval A, eval B (another train selection: without class c), eval A again (reused): the probe classify
    uses is A's, not B's trained without class c."""
    from embedsearch.evaluate.probes import load_probe

    ix = _build(tmp_path, user_columns=())
    a = _eval(ix, methods=["prototypes"])
    b = _eval(ix, methods=["prototypes"], train="split = 'train' AND label <> 'c'")
    assert _probe_meta(ix)["run_id"] == b.run_id
    assert not load_probe(ix, "prototypes")[0].has[2]  # B's probe cannot predict class c
    again = _eval(ix, methods=["prototypes"])
    assert again.timings[0]["reused_from"] == a.run_id
    meta = _probe_meta(ix)
    assert meta["run_id"] == a.run_id and meta["train"]["where"] == "split = 'train'"
    fitted, _ = load_probe(ix, "prototypes")
    assert fitted.has.all()
    pred = fitted.scores(ix.vectors(np.asarray(a.results[0].data["predictions"]["id"]))).argmax(1)
    assert pred.tolist() == a.results[0].data["predictions"]["pred"]  # scores as the reused report says
    # B again: reused too, and its own probe comes back
    b2 = _eval(ix, methods=["prototypes"], train="split = 'train' AND label <> 'c'")
    assert b2.timings[0]["reused_from"] == b.run_id and _probe_meta(ix)["run_id"] == b.run_id
    # a result whose probe is gone is computed again, so that its probe exists
    for f in ix.layout.probes.glob("prototypes@*"):
        f.unlink()
    fresh = _eval(ix, methods=["prototypes"])
    assert fresh.timings[0]["reused_from"] is None and _probe_meta(ix)["run_id"] == fresh.run_id


# --------------------------------------------------------------------------------------------- F13


def test_a_one_class_train_selection_skips_the_classifiers_with_the_reason(tmp_path):
    ix = _build(tmp_path, user_columns=())
    _eval(ix, methods=["prototypes", "svc"])  # probes of a two-sided setting first
    assert (ix.layout.probes / "svc.safetensors").exists()
    ix.close()
    r = CliRunner().invoke(cli, ["eval", "u", "--root", str(tmp_path), "--train",
                                 "split = 'train' AND label = 'a'", "--methods",
                                 "prototypes,knn,linear,svc,mlp", "--fresh", "--json"])
    assert r.exit_code == 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    for what in ("linear: linear probe", "SVC rbf: RBF SVC", "linear SVM: linear SVM", "mlp: MLP probe"):
        assert f"not run: {what}: the train selection has items of 1 class; a classifier needs at least 2" \
            in r.output, (what, r.output)
    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert {row["method"] for row in rows} == {"prototypes", "knn"}
    # probes/ follows the run: no svc probe of the earlier two-class setting stands in for the skipped one
    assert not (ix.layout.probes / "svc.safetensors").exists()
    assert _probe_meta(ix)["train"]["where"] == "split = 'train' AND label = 'a'"


# --------------------------------------------------------------------------------------------- F17


def test_eval_methods_may_be_written_with_spaces(tmp_path):
    _build(tmp_path, user_columns=())
    r = CliRunner().invoke(cli, ["eval", "u", "--root", str(tmp_path), "--methods", "knn, prototypes",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert {row["method"] for row in json.loads(r.stdout[r.stdout.index("["):])} == {"knn", "prototypes"}


def test_label_issues_warn_about_a_class_smaller_than_the_folds(tmp_path, caplog):
    ix = _build(tmp_path, user_columns=(), extra={"rare": 3, "single": 1})
    with caplog.at_level(logging.WARNING, logger="embedsearch.evaluate.insight"):
        d = I.find_label_issues(ix, methods=("knn",), n_folds=5)
    said = [r.getMessage() for r in caplog.records]
    assert any("class 'rare' has 3 labelled items, fewer than the 5 folds" in m and "only the other 2" in m
               for m in said), said
    assert any("class 'single' has 1 labelled item," in m and "near 1" in m for m in said), said
    assert d["small_classes"] == {"rare": 3, "single": 1}
    assert not any("'a'" in m for m in said)


def test_outliers_refuse_a_k_beyond_the_selection_naming_the_maximum(tmp_path):
    ix = _build(tmp_path, user_columns=())
    said = r"-k 50 needs at least 51 items.*selects 15: use -k between 1 and 14$"
    with pytest.raises(EvalError, match=said):
        I.find_outliers(ix, where="split = 'test'", k=50)
    assert I.find_outliers(ix, where="split = 'test'", k=14, commit=False)["k"] == 14
