import numpy as np
import pytest
from PIL import Image

import embedsearch as es
from embedsearch.core.errors import QueryError
from embedsearch.evaluate import save_run
from embedsearch.evaluate.probes import load_probe
from embedsearch.sources.datasets import open_source


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    root = tmp_path_factory.mktemp("p")
    es.build_index("digits", name="d", backbone="pixels:8", root=str(root), num_workers=0, progress=False)
    return es.open_index("d", root)


def test_saved_probes_reproduce_the_eval_predictions(ix):
    run = es.evaluate_index(ix, methods=["prototypes", "linear", "svc", "mlp"])
    save_run(ix, run)
    for r in run.results:
        if r.data["variant"] == "SVC rbf":
            continue
        fitted, meta = load_probe(ix, r.method)  # from the safetensors file: a new object, the same scoring code
        assert fitted is not r.model
        ids = np.asarray(r.data["predictions"]["id"])
        pred = fitted.scores(ix.vectors(ids)).argmax(1)
        assert pred.tolist() == r.data["predictions"]["pred"], r.method
        assert meta["run_id"] == run.run_id and meta["train"]["where"] == "split = 'train'"


def test_classify_images_from_anywhere(ix, tmp_path):
    src = open_source("digits")
    test = [r for r in src.records if r.split == "test"][:20]
    files = []
    for r in test:
        Image.fromarray(r.array).save(tmp_path / f"{r.id}.png")
        files.append(tmp_path / f"{r.id}.png")
    rows = es.classify(ix, "linear", files, k=1)
    acc = np.mean([row["label"] == r.label for row, r in zip(rows, test)])
    assert acc >= 0.9 and rows.to_pandas().shape[0] == 20
    with pytest.raises(QueryError, match="unknown probe"):
        es.classify(ix, "rbf", files)


def test_results_convert_to_arrow_and_pandas(ix):
    hits = es.search_index(ix, ids=[0], k=3)
    assert hits.to_arrow().num_rows == 3 and list(hits.to_pandas()["rank"]) == [1, 2, 3]
    assert es.evaluate_index(ix, methods=["prototypes"]).table().to_arrow().column("method").to_pylist() == ["prototypes"]


@pytest.mark.parametrize("k", [0, -1])
def test_classify_refuses_k_below_one(ix, k):
    # -1 used to slice off the last class and return all the others
    with pytest.raises(QueryError, match="-k must be"):
        es.classify(ix, "linear", [], k=k)


def test_a_mistyped_probe_record_is_one_line_naming_the_field(ix):
    """The probe record is read through `from_record`: `params` as a string failed inside the method's `load`
    with an AttributeError; now one line names the file and the field."""
    import json

    save_run(ix, es.evaluate_index(ix, methods=["prototypes"]))
    js = ix.layout.probes / "prototypes.json"
    good = js.read_text()
    try:
        js.write_text(json.dumps({**json.loads(good), "params": "k=3"}))
        with pytest.raises(QueryError, match=r"probe record .*prototypes\.json: field params must be dict, not str"):
            load_probe(ix, "prototypes")
    finally:
        js.write_text(good)
    assert load_probe(ix, "prototypes")[1]["variant"]
