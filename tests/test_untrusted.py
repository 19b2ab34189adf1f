"""An index may come from someone else: everything in its folder is untrusted input. Whatever the manifest, the
links and the probe files say, no embedsearch command touches a file outside the index, and nothing ends in a
traceback."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from embedsearch.build import BuildConfig, build_index
from embedsearch.build.repair import repair, verify
from embedsearch.cli import cli
from embedsearch.core.errors import EmbedsearchError, IndexStateError
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source


def _tree(d: Path) -> dict:
    """Every file under d with its content hash and mtime: a sentinel that shows any touch."""
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def sentinel(tmp_path) -> Path:
    d = tmp_path / "sentinel"
    d.mkdir()
    for name in ("victim", "part-00000.parquet", "catalog.duckdb", "index.faiss"):
        (d / name).write_bytes(b"do not touch " + name.encode())
    return d


@pytest.fixture
def built(tmp_path, image_folder):
    build_index(open_source(str(image_folder)), BuildConfig.of(name="v", root=str(tmp_path / "ix"), backbone="pixels:8",
                part_size=8, num_workers=0), progress=False)
    return tmp_path / "ix"


def _edit_manifest(ix_dir: Path, fn) -> None:
    m = json.loads((ix_dir / "manifest.json").read_text())
    fn(m)
    (ix_dir / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("hostile", ["../../sentinel/victim", "ABS", "parts/../../x", "part-00001.parquet/../x"])
def test_repair_never_deletes_a_file_the_manifest_names_outside_the_index(built, sentinel, hostile):
    before = _tree(sentinel)
    target = str(sentinel / "victim") if hostile == "ABS" else hostile
    _edit_manifest(built / "v", lambda m: m["parts"][0].update(file=target))
    rep = verify("v", built)
    assert not rep.sound and rep.problems[0]["problem"] == "manifest"
    assert "parts[0].file" in rep.problems[0]["detail"]
    with pytest.raises(IndexStateError, match="cannot be repaired"):
        repair("v", built, progress=False)
    with pytest.raises(IndexStateError, match=r"parts\[0\]\.file"):
        Index.open("v", built)
    r = CliRunner().invoke(cli, ["verify", "v", "--root", str(built), "--repair"])
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("\n") <= 3
    assert _tree(sentinel) == before


@pytest.mark.parametrize("entry", ["parts", "catalog.duckdb", ".lock", "reports", "parts/part-00001.parquet"])
def test_a_link_out_of_the_index_is_refused_by_readers_verify_and_every_writer(built, sentinel, image_folder, entry):
    ix_dir = built / "v"
    p = ix_dir / entry
    target = {"parts": sentinel, "reports": sentinel}.get(entry, sentinel / Path(entry).name)
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
    if entry == "parts":  # the link points at a folder holding what looks like the index's parts
        shutil.copytree(built / "v" / "reports", sentinel / "reports-copy", dirs_exist_ok=True)
    os.symlink(target, p)
    before = _tree(sentinel)
    rep = verify("v", built)
    assert not rep.sound and rep.problems[0]["problem"] == "folder" and "symbolic link" in rep.problems[0]["detail"]
    with pytest.raises(IndexStateError, match="symbolic link"):
        Index.open("v", built)
    with pytest.raises(IndexStateError, match="symbolic link"):
        repair("v", built, progress=False)
    with pytest.raises(IndexStateError, match="symbolic link"):
        build_index(open_source(str(image_folder)), BuildConfig.of(name="v", root=str(built), backbone="pixels:8",
                    part_size=8, num_workers=0, add=True), progress=False)
    assert _tree(sentinel) == before


def test_repair_checks_it_can_re_embed_before_it_deletes_anything(built, image_folder):
    """The source is gone: repair refuses and leaves the damaged index exactly as it was (still repairable)."""
    part = built / "v" / "parts" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[:-100])
    before = _tree(built / "v")
    shutil.move(image_folder, image_folder.with_name("moved"))
    with pytest.raises(IndexStateError, match="nothing was changed"):
        repair("v", built, progress=False)
    assert {k: v for k, v in _tree(built / "v").items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
    shutil.move(image_folder.with_name("moved"), image_folder)
    assert repair("v", built, progress=False).sound


def test_repair_when_the_source_has_gained_images(built, image_folder):
    """It repairs what the index holds and says how many new items it left for `index --add`."""
    from tests.conftest import make_image

    n = len(Index.open("v", built).select()["id"])
    (built / "v" / "parts" / "part-00001.parquet").unlink()
    make_image(image_folder / "train" / "red" / "new_one.png", (200, 10, 10), seed=99)
    rep = repair("v", built, progress=False)
    assert rep.sound, rep.problems
    assert any("left 1 items" in r for r in rep.repaired)
    assert len(Index.open("v", built).select()["id"]) == n
    assert repair("v", built, progress=False).sound  # and a second run has nothing to do


def test_repair_when_the_source_has_lost_an_image_of_a_damaged_part(built, image_folder):
    ix = Index.open("v", built)
    gone = ix.sql("SELECT path FROM items WHERE part = 1 ORDER BY id LIMIT 1")[1][0][0]
    ix.close()
    (built / "v" / "parts" / "part-00001.parquet").unlink()
    (image_folder / gone).unlink()
    rep = repair("v", built, progress=False)
    assert rep.sound, rep.problems
    row = Index.open("v", built).sql("SELECT status, error_type FROM items WHERE path = ?", [gone])[1]
    assert row == [("failed", "NotInSource")]


# ------------------------------------------------------------------------------------ property-based mutations

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["../../sentinel/victim", "/etc/passwd", "part-00000.parquet",
                                                          "index.faiss", "complete", "float16", "a" * 64]),
                    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(obj, prefix=()):
    """Every (path) to a value inside the JSON object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _mutate(m, path, op, value):
    *head, last = path
    parent = m
    for k in head:
        parent = parent[k]
    if op == "delete":
        del parent[last]
    else:
        parent[last] = value


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One sound index (and its source) copied for each example."""
    from tests.conftest import COLORS, make_image

    d = tmp_path_factory.mktemp("pristine")
    for i in range(12):
        cls = list(COLORS)[i % 3]
        make_image(d / "images" / ("train" if i < 9 else "test") / cls / f"{i}.png", COLORS[cls], seed=i)
    build_index(open_source(str(d / "images")), BuildConfig.of(name="v", root=str(d / "ix"), backbone="pixels:4",
                part_size=4, num_workers=0), progress=False)
    ix = Index.open("v", d / "ix")
    from embedsearch.evaluate import evaluate, save_run

    save_run(ix, evaluate(ix, methods=["prototypes", "linear"]))
    return d


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_manifest_or_probes_is_a_clean_error_and_touches_nothing_outside(pristine, tmp_path_factory,
                                                                                         data):
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(pristine / "images", work / "images")
    shutil.copytree(pristine / "ix", work / "ix")
    m = json.loads((pristine / "ix" / "v" / "manifest.json").read_text())
    m["source"]["spec"] = str(work / "images")  # the copy's own source
    sentinel = work / "sentinel"
    sentinel.mkdir()
    (sentinel / "victim").write_text("x")
    for _ in range(data.draw(st.integers(1, 3), label="n_mutations")):
        paths = list(_paths(m))
        path = data.draw(st.sampled_from(paths), label="path")
        op = data.draw(st.sampled_from(["set", "delete"]), label="op")
        _mutate(m, path, op, data.draw(_VALUES, label="value"))
    (work / "ix" / "v" / "manifest.json").write_text(json.dumps(m))
    probe = data.draw(st.sampled_from([None, "linear.json", "linear.safetensors", "prototypes.safetensors"]),
                      label="probe")
    if probe:
        f = work / "ix" / "v" / "probes" / probe
        b = f.read_bytes()
        cut = data.draw(st.integers(0, len(b)), label="cut")
        f.write_bytes(b[:cut] + data.draw(st.binary(max_size=8), label="junk"))
    before = _tree(sentinel)

    refused = None
    try:
        ix = Index.open("v", work / "ix")
        ids = ix.select()["id"]
        from embedsearch.query.search import search

        assert len(search(ix, ids=[int(ids[0])], k=3)) == 3
        from embedsearch.evaluate.probes import load_probe

        for method in ("linear", "prototypes"):
            fitted, _ = load_probe(ix, method)
            assert np.isfinite(fitted.scores(np.ones((2, ix.dim)))).any()
    except EmbedsearchError as e:
        refused = e
    event(f"readers: {type(refused).__name__ if refused else 'served'}")
    rep = verify("v", work / "ix")
    if refused is not None and not isinstance(refused, IndexStateError) or probe:
        pass  # a probe refusal is the probe's own finding (verify checks the index, not saved probes)
    elif refused is not None:
        assert not rep.sound, f"readers refuse ({refused}) but verify says sound"
    try:
        event(f"repair: {'sound' if repair('v', work / 'ix', progress=False).sound else 'unsound'}")
    except EmbedsearchError as e:
        event(f"repair refused: {type(e).__name__}")
    assert _tree(sentinel) == before


def test_newer_formats_are_refused_with_one_line_by_readers_and_verify(built):
    import duckdb

    ix_dir = built / "v"
    con = duckdb.connect(str(ix_dir / "catalog.duckdb"))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(IndexStateError, match="schema version '99'.*upgrade embedsearch"):
        Index.open("v", built).select()
    rep = verify("v", built)
    assert [p["problem"] for p in rep.problems] == ["catalog version"]
    with pytest.raises(IndexStateError, match="newer embedsearch.*nothing was changed"):
        repair("v", built, progress=False)
    _edit_manifest(ix_dir, lambda m: m.update(format_version=7))
    with pytest.raises(IndexStateError, match="format version 7, written by a newer embedsearch"):
        Index.open("v", built)
    assert verify("v", built).problems[0]["problem"] == "manifest"


def test_verify_checks_the_catalog_part_of_each_item(built):
    """An item whose catalog row names another part than the one holding its vector: readers would filter it
    wrongly, so verify reports it and repair rebuilds the catalog."""
    import duckdb

    con = duckdb.connect(str(built / "v" / "catalog.duckdb"))
    con.execute("UPDATE items SET part = 3 WHERE id = (SELECT min(id) FROM items WHERE part = 0)")
    con.close()
    rep = verify("v", built)
    assert [(p["problem"], "another part" in p["detail"]) for p in rep.problems] == [("catalog out of step", True)]
    assert repair("v", built, progress=False).sound


def test_a_probe_changed_after_it_was_saved_is_refused(built):
    from embedsearch.evaluate import evaluate, save_run
    from embedsearch.evaluate.probes import load_probe

    ix = Index.open("v", built)
    save_run(ix, evaluate(ix, methods=["linear"]))
    f = built / "v" / "probes" / "linear.safetensors"
    b = bytearray(f.read_bytes())
    b[-3] ^= 1  # one bit of the weights
    f.write_bytes(bytes(b))
    with pytest.raises(EmbedsearchError, match="does not match the checksum"):
        load_probe(Index.open("v", built), "linear")


@pytest.mark.parametrize("field", ["space", "parts", "name"])
def test_a_required_manifest_field_set_to_null_is_one_line(pristine, tmp_path, field):
    """Found by the property test above: `"space": null` passed the type check for nested objects and failed later
    with an AttributeError. A required field that is null is a one-line error naming it, for readers and verify."""
    import json
    import shutil

    from embedsearch.build.repair import verify
    from embedsearch.core.errors import IndexStateError

    shutil.copytree(pristine / "ix", tmp_path / "ix")
    mf = tmp_path / "ix" / "v" / "manifest.json"
    m = json.loads(mf.read_text())
    m[field] = None
    mf.write_text(json.dumps(m))
    with pytest.raises(IndexStateError, match=f"field {field} must be"):
        Index.open("v", tmp_path / "ix")
    try:  # verify reports it as a problem (or refuses with the same line)
        said = json.dumps([p["detail"] if isinstance(p, dict) and "detail" in p else p
                           for p in verify("v", tmp_path / "ix").problems], default=str)
    except IndexStateError as e:
        said = str(e)
    assert f"field {field} must be" in said
