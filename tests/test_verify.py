import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig, build_index
from embedsearch.build.repair import repair, verify
from embedsearch.cli import cli
from embedsearch.core.errors import IndexStateError
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source
from embedsearch.store import parts as store


@pytest.fixture
def built(tmp_path, image_folder):
    """33 generated images in 5 parts; repair must be able to reopen the source, so it lives on disk."""
    build_index(open_source(str(image_folder)), BuildConfig.of(name="v", root=str(tmp_path / "ix"), backbone="pixels:8",
                part_size=8, num_workers=0), progress=False)
    return tmp_path / "ix"


def _snapshot(root):
    ix = Index.open("v", root)
    ids, vecs = store.read_all(ix.part_paths)
    o = np.argsort(ids)
    from embedsearch.query.search import search

    return ids[o], vecs[o], [r["id"] for r in search(ix, ids=ids[o][[3, 20]].tolist(), k=5)]


def test_sound_index_verifies(built):
    rep = verify("v", built)
    assert rep.sound and rep.checked["parts"] == "5 of 5 sound"
    r = CliRunner().invoke(cli, ["verify", "v", "--root", str(built)])
    assert r.exit_code == 0 and "sound" in r.stdout


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "delete"])
def test_damaged_part_is_found_and_only_it_is_re_embedded(built, damage):
    before = _snapshot(built)
    parts = sorted((built / "v" / "parts").glob("part-*.parquet"))
    victim = parts[1]
    others = {p.name: store.file_sha256(p) for p in parts if p != victim}
    data = bytearray(victim.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x10
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    else:
        victim.unlink()
    rep = verify("v", built)
    assert not rep.sound and rep.problems[0]["file"] == victim.name
    assert rep.problems[0]["problem"] == {"bitflip": "part changed", "truncate": "part changed",
                                          "delete": "part missing"}[damage]
    if damage == "bitflip":
        Index.open("v", built)  # opening checks sizes only (cheap); the same-size flip is verify's to find
    else:
        with pytest.raises(IndexStateError):
            Index.open("v", built)
    r = CliRunner().invoke(cli, ["verify", "v", "--root", str(built)])
    assert r.exit_code == 1 and victim.name in r.stdout
    fixed = repair("v", built, progress=False)
    assert fixed.sound, fixed.problems
    assert {p.name: store.file_sha256(p) for p in parts if p != victim} == others  # untouched
    after = _snapshot(built)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_page_checksums_catch_a_flipped_bit_in_the_vectors(built):
    f = sorted((built / "v" / "parts").glob("part-*.parquet"))[0]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(IndexStateError, match="unreadable"):
        store.read_part(f)


def test_foreign_faiss_file_and_deleted_catalog_are_rebuilt(built, tmp_path):
    before = _snapshot(built)
    other = tmp_path / "other"
    src = open_source("digits")
    src.records = src.records[:50]
    build_index(src, BuildConfig.of(name="v", root=str(other), backbone="pixels:8", num_workers=0), progress=False)
    assert (other / "v" / "index.faiss").stat().st_size != (built / "v" / "index.faiss").stat().st_size
    shutil.copy(other / "v" / "index.faiss", built / "v" / "index.faiss")
    (built / "v" / "catalog.duckdb").unlink()
    rep = verify("v", built)
    kinds = {p["problem"] for p in rep.problems}
    assert {"faiss changed", "catalog missing"} <= kinds
    fixed = repair("v", built, progress=False)
    assert fixed.sound, fixed.problems
    after = _snapshot(built)
    assert before[2] == after[2]
    np.testing.assert_array_equal(before[1], after[1])
    _, rows = Index.open("v", built).sql("SELECT count(*) FILTER (WHERE status = 'ok'), count(*) FROM items")
    assert rows == [(33, 33)]


def test_repair_re_embeds_at_the_recorded_precision(tmp_path, image_folder, monkeypatch):
    import json

    from embedsearch.build import pipeline as build

    cfg = BuildConfig.of(name="v", root=str(tmp_path / "ix"), backbone="timm:test_vit", pretrained=False,
                      image_size=32, precision="fp32", dtype="float32", part_size=8, num_workers=0)
    build_index(open_source(str(image_folder)), cfg, progress=False)
    root = tmp_path / "ix"
    before = _snapshot(root)
    mf = root / "v" / "manifest.json"
    m = json.loads(mf.read_text())
    m["build"]["backbone"]["precision"] = "auto"  # built with `auto` where it meant fp32; here it means bf16
    mf.write_text(json.dumps(m))
    monkeypatch.setattr(build, "resolve_precision", lambda p, device: "bf16" if p == "auto" else p)
    sorted((root / "v" / "parts").glob("part-*.parquet"))[1].unlink()
    assert repair("v", root, progress=False).sound
    after = _snapshot(root)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], rtol=1e-5, atol=1e-6)  # fp32 again, not bf16


def test_a_repair_that_dies_midway_leaves_an_index_readers_refuse_then_repair_finishes(built, monkeypatch):
    before = _snapshot(built)
    victim = sorted((built / "v" / "parts").glob("part-*.parquet"))[1]
    victim.unlink()
    import embedsearch.build.repair as repair_mod

    def die(*a, **kw):
        raise KeyboardInterrupt  # killed after repair dropped the damaged part and its FAISS entry

    monkeypatch.setattr(repair_mod, "build_index", die)
    with pytest.raises(KeyboardInterrupt):
        repair("v", built, progress=False)
    # the old FAISS file still holds the dropped part's vectors: serving it with the remaining parts would be wrong
    with pytest.raises(IndexStateError, match="verify --repair"):
        Index.open("v", built)
    monkeypatch.undo()
    assert repair("v", built, progress=False).sound
    after = _snapshot(built)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]
