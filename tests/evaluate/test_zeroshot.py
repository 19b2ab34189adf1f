import json

import numpy as np
import pytest

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.errors import EvalError
from embedsearch.evaluate import evaluate
from embedsearch.evaluate.methods.zeroshot import CIFAR_TEMPLATES, class_vectors
from embedsearch.query.search import search
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source


@pytest.fixture
def clip_ix(tmp_path, image_folder, tiny_clip_config):
    build_index(open_source(str(image_folder)), BuildConfig.of(name="c", root=str(tmp_path), num_workers=0,
                backbone=f"open_clip:{tiny_clip_config}", pretrained=False, dtype="float32"), progress=False)
    return Index.open("c", tmp_path)


def test_zeroshot_matches_the_clip_formula(clip_ix, tmp_path):
    assert len(CIFAR_TEMPLATES) == 18
    (tmp_path / "p.json").write_text(json.dumps({"classnames": {"red": "red square"}, "templates": ["a {}.", "the {}."]}))
    r = evaluate(clip_ix, methods=["zeroshot"], prompts=str(tmp_path / "p.json")).results[0].data
    bb = clip_ix.backbone()
    cv = class_vectors(bb.text, ["blue", "green", "red square"], ["a {}.", "the {}."])
    ids = np.asarray(r["predictions"]["id"])
    x = clip_ix.vectors(ids)
    want = np.argmax(100 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ cv.T, axis=1)
    assert r["predictions"]["pred"] == want.tolist() and r["params"]["templates"] == 2


def test_text_search_and_zeroshot_only_for_clip(clip_ix, tmp_path):
    rows = search(clip_ix, texts=["a red thing"], k=3)
    assert len(rows) == 3 and rows[0]["query"] == "text:a red thing"
    src = open_source("digits")
    src.records = src.records[:50]
    build_index(src, BuildConfig.of(name="p", root=str(tmp_path), backbone="pixels:4", num_workers=0), progress=False)
    with pytest.raises(EvalError, match="zeroshot needs a backbone with a text tower"):
        evaluate(Index.open("p", tmp_path), methods=["zeroshot"])
