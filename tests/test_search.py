import json

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.errors import QueryError
from embedsearch.core.vectors import l2_normalize
from embedsearch.query.search import search
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    src = open_source("digits")
    src.records = src.records[:300]
    build_index(src, BuildConfig.of(name="d", root=str(root), backbone="pixels:8", num_workers=0, dtype="float32"),
                progress=False)
    return Index.open("d", root)


def _brute(ix, q, ids):
    v = ix.vectors(ids)
    s = (q / np.linalg.norm(q)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    return ids[np.argsort(-s, kind="stable")]


def test_search_by_id_drops_self_and_matches_brute_force(ix):
    rows = search(ix, ids=[7], k=5)
    all_ids = ix.select()["id"]
    want = [i for i in _brute(ix, ix.vectors([7])[0], all_ids) if i != 7][:5]
    assert [r["id"] for r in rows] == want and all(r["query"] == "id:7" for r in rows)


def test_filtered_search_stays_inside_the_selection(ix):
    rows = search(ix, ids=[3], k=8, where="split = 'train' AND label = '3'")
    sel = ix.select("split = 'train' AND label = '3'")["id"]
    assert {r["label"] for r in rows} == {"3"} and {r["split"] for r in rows} == {"train"}
    assert [r["id"] for r in rows] == [i for i in _brute(ix, ix.vectors([3])[0], sel) if i != 3][:8]


def test_search_by_vector_file_and_image(ix, tmp_path):
    np.save(tmp_path / "q.npy", ix.vectors([1, 2]))
    rows = search(ix, vector_file=tmp_path / "q.npy", k=1)
    assert [r["id"] for r in rows] == [1, 2]
    from PIL import Image

    src = open_source("digits")
    Image.fromarray(src.records[4].array).save(tmp_path / "four.png")
    rows = search(ix, images=[tmp_path / "four.png"], k=1)
    assert rows[0]["id"] == 4 and rows[0]["score"] > 0.999


def test_query_image_is_embedded_at_the_index_precision(tmp_path):
    import torch
    from PIL import Image

    from embedsearch.query.search import query_vectors

    src = open_source("digits")
    src.records = src.records[:6]
    build_index(src, BuildConfig.of(name="bf", root=str(tmp_path), backbone="timm:test_vit", pretrained=False,
                                 image_size=32, precision="bf16", dtype="float32", num_workers=0), progress=False)
    ix = Index.open("bf", tmp_path)
    Image.fromarray(src.records[3].array).save(tmp_path / "three.png")
    _, q = query_vectors(ix, images=[tmp_path / "three.png"])
    np.testing.assert_allclose(q[0], ix.vectors([3])[0], rtol=1e-5, atol=1e-5)  # the stored vector, bit for bit
    bb = ix.backbone()
    with torch.inference_mode():  # the same image in float32 lands elsewhere: the check above can fail
        fp32 = bb.embed(bb.preprocess(Image.open(tmp_path / "three.png").convert("RGB")).unsqueeze(0)).numpy()[0]
    assert np.abs(fp32 - ix.vectors([3])[0]).max() > 1e-3


def test_search_bad_input(ix, tmp_path):
    with pytest.raises(QueryError, match="at least 1"):
        search(ix, ids=[1], k=0)
    np.save(tmp_path / "bad.npy", np.ones((1, 5)))
    with pytest.raises(QueryError, match="192-d"):
        search(ix, vector_file=tmp_path / "bad.npy")
    with pytest.raises(QueryError, match="has no embedding"):
        search(ix, ids=[10**12])
    with pytest.raises(QueryError, match="--text needs a backbone with a text tower"):
        search(ix, texts=["a cat"])
    assert len(search(ix, ids=[0], k=10_000)) == 299


def test_search_streams_batches_and_matches_one_batch(index_root, tmp_path, monkeypatch):
    from embedsearch.cli import cli
    from embedsearch.query import search as S

    build_index(open_source("digits"), BuildConfig.of(name="s", backbone="pixels:4", num_workers=0), progress=False)
    ix = Index.open("s")
    q = ix.vectors()[:50]
    np.save(tmp_path / "q.npy", q)
    descs, qv = S.query_vectors(ix, vector_file=tmp_path / "q.npy")
    whole = list(S.iter_search(ix, descs, qv, k=3, where="split = 'train'"))
    batched = list(S.iter_search(ix, descs, qv, k=3, where="split = 'train'", batch=7))  # 8 FAISS calls
    assert whole == batched and len(whole) == 150
    ix.close()
    monkeypatch.setattr(S, "SEARCH_BATCH", 7)
    res = CliRunner().invoke(cli, ["search", "s", "--vector", str(tmp_path / "q.npy"), "-k", "3", "--where",
                                   "split = 'train'", "--nl"])
    assert res.exit_code == 0, res.output
    assert [json.loads(line) for line in res.output.splitlines()] == whole
    res = CliRunner().invoke(cli, ["search", "s", "--vector", str(tmp_path / "q.npy"), "-k", "3", "--csv"])
    lines = res.output.splitlines()
    assert lines[0] == "query,rank,id,score,label,split,path" and len(lines) == 151


def test_selective_where_on_an_approximate_index_is_exact_and_full(index_root):
    build_index(open_source("digits"), BuildConfig.of(name="ivf", backbone="pixels:8", index="IVF32,Flat",
                                                   num_workers=0), progress=False)
    ix = Index.open("ivf")
    assert ix.faiss.nprobe == 1  # probes 1 of 32 lists: a filter leaves most of them unseen
    where = "label = '3' AND split = 'test'"
    sel = ix.select(where)["id"]
    hits = search(ix, ids=[0], k=10, where=where)
    x = l2_normalize(ix.vectors(sel))
    truth = sel[np.argsort(-(x @ l2_normalize(ix.vectors([0]))[0]))][:10]
    assert [h["id"] for h in hits] == truth.tolist()  # k hits, the exact ones, all passing the filter


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_text('{"not": "npy"}'), "is not a .npy file"),
    (lambda p: np.savez(p.open("wb"), a=np.ones(192)), "is not a .npy file"),  # a zip named .npy
    (lambda p: np.save(p, np.array(["a", "b"])), "holds <U1 values, expected numbers"),
    (lambda p: np.save(p, np.ones((2, 3), np.float32)), r"shape \(2, 3\); this index holds 192-d"),
    (lambda p: np.save(p, np.stack([np.ones(192), np.full(192, np.nan)])), "query vector 1 contains NaN"),
    (lambda p: np.save(p, np.zeros((1, 192), np.float32)), "query vector 0 is all zeros"),
    (lambda p: None, "No such file"),
])
def test_bad_query_vector_files_are_one_line_errors(ix, tmp_path, make, match):
    f = tmp_path / "q.npy"
    make(f)
    with pytest.raises(QueryError, match=match):
        search(ix, vector_file=f, k=3)
