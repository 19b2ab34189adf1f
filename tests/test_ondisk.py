"""IVF indexes with their lists on disk (store/ondisk.py): the same results as the in-memory index of the same trained
quantizer, a moved folder that opens, `--add` that keeps the quantizer and re-merges, the recall drift, `--retrain`,
kill -9 at every new write point, and `--json` that FAISS's own printing cannot break. Real FAISS, real processes."""

import json
import os
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pytest

from embedsearch.core.files import file_sha256
from embedsearch.reader import Index
from embedsearch.store import faiss_index as vindex
from embedsearch.store import ondisk
from embedsearch.store import parts as store
from tests.conftest import make_image

DIGITS = ["digits", "-b", "pixels:8", "--part-size", "150", "--index", "IVF16,Flat"]


def _cli(root, *args, crash_at=None, check=True):
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1"}
    if crash_at:
        env["EMBEDSEARCH_CRASH_AT"] = crash_at
    p = subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", *args, "--json"], env=env,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == (-9 if crash_at else 0), p.stderr[-2000:]
    return p


def _hits(ix: Index, q: np.ndarray, nprobe: int, subset=None):
    index = ix.faiss
    vindex.set_params(index, {"nprobe": nprobe})
    return vindex.search(index, q, 10, subset=subset)


def _in_ram_twin(ix: Index):
    """The in-memory index of the same trained quantizer: its centroids, every part added in part order."""
    twin = faiss.read_index(str(ix.layout.faiss), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(twin)
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index owns and frees it
    twin.ntotal = ivf.ntotal = 0
    for ids, v in store.iter_parts(ix.part_paths):
        twin.add_with_ids(vindex.l2_normalize(v), ids)
    return twin


def test_on_disk_equals_the_in_memory_build_with_and_without_where_and_opens_moved(tmp_path):
    root = tmp_path / "ix"
    out = _cli(root, *DIGITS, "-n", "d", "--on-disk", "--max-memory", "1MB")
    summary = json.loads(out.stdout)  # FAISS printed while it built and opened: stdout is still one document
    assert summary["items"] == 1797
    _cli(root, *DIGITS, "-n", "ram")
    disk, ram = Index.open("d", root), Index.open("ram", root)
    fa = disk.manifest.faiss
    st = fa.extra["storage"]
    assert fa.lists_file == "lists.0001.ivfdata" and st["shards"] == 6  # 250 kB shards: two 150-row parts of 192-d each
    assert not (root / "d" / ondisk.WORK_DIR).exists()
    assert (root / "d" / "index.faiss").stat().st_size < 20_000  # the quantizer; the codes are in the lists file
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(disk.faiss).invlists),
                      faiss.OnDiskInvertedLists)
    # the same trained quantizer as the in-memory build (same seeded sample): the same search, ids and scores
    q = disk.vectors(disk.select(limit=60)["id"])
    subset = disk.select("label IN ('3', '8')")["id"]
    for nprobe in (1, 4, 16):
        for sub in (None, subset):
            (s1, i1), (s2, i2) = _hits(disk, q, nprobe, sub), _hits(ram, q, nprobe, sub)
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_array_equal(s1, s2)
    twin = _in_ram_twin(disk)
    vindex.set_params(twin, {"nprobe": 4})
    np.testing.assert_array_equal(twin.search(vindex.l2_normalize(q), 10)[1], _hits(disk, q, 4)[1])
    expect = _hits(disk, q, 4)
    disk.close(), ram.close()
    # a moved (renamed) folder opens where it is now: index.faiss names the lists file by its base name only
    shutil.move(root / "d", tmp_path / "elsewhere")
    moved = Index.open(tmp_path / "elsewhere")
    np.testing.assert_array_equal(_hits(moved, q, 4)[1], expect[1])
    moved.close()


def _folder(root, n, start=0):
    for i in range(start, start + n):
        make_image(root / ("train" if i % 5 else "test") / f"c{i % 3}" / f"im{i:04d}.png",
                   (40 * (i % 3), 90, 200 - 40 * (i % 3)), size=(12, 12), seed=i)
    return root


FOLDER = ["-b", "pixels:4", "--part-size", "100", "--index", "IVF8,Flat", "-n", "f"]


def test_add_keeps_the_quantizer_merges_into_a_new_version_and_retrain_resets_the_drift(tmp_path):
    root, images = tmp_path / "ix", _folder(tmp_path / "images", 500)
    _cli(root, str(images), *FOLDER, "--on-disk")
    ix = Index.open("f", root)
    first = faiss.extract_index_ivf(ix.faiss).quantizer.reconstruct_n(0, 8)
    q0 = ix.vectors(ix.select(limit=10)["id"])
    before = _hits(ix, q0, 2)
    _folder(images, 300, start=500)
    _cli(root, str(images), *FOLDER, "--add")  # no --on-disk: the index keeps it
    # a reader of the previous snapshot keeps its mapped lists file (deleted from the folder) and its answers
    np.testing.assert_array_equal(_hits(ix, q0, 2)[1], before[1])
    ix.close()
    ix = Index.open("f", root)
    st = ix.manifest.faiss.extra["storage"]
    assert (ix.manifest.faiss.lists_file, st["extended"], st["trained"]["vectors"]) == \
        ("lists.0002.ivfdata", "lists.0001.ivfdata", 500)
    assert not (root / "f" / "lists.0001.ivfdata").exists()  # the old version goes once the new one is published
    quant = faiss.extract_index_ivf(ix.faiss).quantizer.reconstruct_n(0, 8)
    np.testing.assert_array_equal(quant, first)  # the trained centroids kept
    assert ix.faiss.ntotal == 800
    # the merge of the old lists file and the new shards equals adding every part into that quantizer
    q = ix.vectors(ix.select(limit=40)["id"])
    twin = _in_ram_twin(ix)
    for nprobe in (1, 3):
        vindex.set_params(twin, {"nprobe": nprobe})
        np.testing.assert_array_equal(twin.search(vindex.l2_normalize(q), 10)[1], _hits(ix, q, nprobe)[1])
    from embedsearch.evaluate.quality import quality

    drift = quality(ix, n_queries=100)["drift"]
    assert drift["vectors_at_training"] == 500 and drift["vectors_now"] == 800
    assert drift["delta_10-recall@10"] == round(drift["recall_now"]["10-recall@10"]
                                                - drift["recall_at_training"]["10-recall@10"], 4)
    ix.close()
    _folder(images, 50, start=800)
    _cli(root, str(images), *FOLDER, "--add", "--retrain")
    ix = Index.open("f", root)
    st = ix.manifest.faiss.extra["storage"]
    assert (ix.manifest.faiss.lists_file, st["extended"], st["trained"]["vectors"]) == ("lists.0003.ivfdata", None, 850)
    assert quality(ix, n_queries=50)["drift"]["delta_10-recall@10"] == 0.0  # measured on the queries just kept
    ix.close()
    # verify reads the lists file too; a damaged one is found and repaired
    from embedsearch.build.repair import repair, verify

    assert verify("f", root).sound
    lf = root / "f" / "lists.0003.ivfdata"
    with open(lf, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 8)
    rep = verify("f", root)
    assert not rep.sound and rep.problems[0]["problem"] == "faiss lists changed"
    assert repair("f", root, progress=False).sound
    fixed = Index.open("f", root)
    assert fixed.manifest.faiss.lists_file and fixed.faiss.ntotal == 850  # rebuilt on disk, as the index was
    fixed.close()


def test_on_disk_refusals_are_one_line(tmp_path):
    root = tmp_path / "ix"
    p = subprocess.run([sys.executable, "-m", "embedsearch", "index", "digits", "-b", "pixels:8", "-n", "x",
                        "--on-disk"], env={**os.environ, "EMBEDSEARCH_HOME": str(root)}, capture_output=True, text=True)
    assert p.returncode == 2 and "--on-disk needs an IVF index" in p.stderr
    from embedsearch.core.errors import IndexStateError
    from embedsearch.store.manifest import FaissRecord

    with pytest.raises(IndexStateError, match="lists_file '../x' is not a lists file name"):
        FaissRecord.of({"ntotal": 1, "bytes": 1, "sha256": "0" * 64, "factory": "IVF1,Flat",
                        "storage": {"kind": "ondisk", "lists_file": "../x", "lists_bytes": 1}})


def _fingerprint(root, name):
    ix = Index.open(name, root)
    fa = ix.manifest.faiss
    q = ix.vectors(ix.select(limit=20)["id"])
    hits = _hits(ix, q, 4)[1]
    out = (fa.sha256, fa.extra["storage"]["lists_sha256"], file_sha256(root / name / fa.lists_file), hits.tolist())
    ix.close()
    return out


# every new write point of an on-disk build: the trained quantizer, a shard (its sizes first), the lists file
# (during the merge, before and after its rename), and index.faiss naming it
WRITE_POINTS = ["after-rename:trained.faiss", "after-rename:shard-00000-00001.sizes.npy",
                "after-rename:shard-00002-00003.faiss", "mid-write:lists.0001.ivfdata",
                "before-rename:lists.0001.ivfdata", "after-rename:lists.0001.ivfdata",
                "before-rename:index.faiss", "after-rename:index.faiss"]


@pytest.mark.slow
@pytest.mark.parametrize("tag", WRITE_POINTS)
def test_kill_9_at_each_write_point_resumes_to_an_identical_index(tmp_path_factory, tag):
    reference = _reference(tmp_path_factory)
    root = tmp_path_factory.mktemp("crash")
    args = [*DIGITS, "-n", "d", "--on-disk", "--max-memory", "1MB"]
    _cli(root, *args, crash_at=tag)
    _cli(root, *args)
    assert _fingerprint(root, "d") == reference
    assert not (root / "d" / ondisk.WORK_DIR).exists()
    assert [f.name for f in (root / "d").glob("lists.*")] == ["lists.0001.ivfdata"]


def test_kill_9_during_the_merge_resumes_to_an_identical_index(tmp_path_factory):
    """The default suite's one crash point (all of them: the slow test above)."""
    reference = _reference(tmp_path_factory)
    root = tmp_path_factory.mktemp("crash1")
    args = [*DIGITS, "-n", "d", "--on-disk", "--max-memory", "1MB"]
    _cli(root, *args, crash_at="mid-write:lists.0001.ivfdata#2")
    assert (root / "d" / ondisk.WORK_DIR / "trained.faiss").exists()  # the work the resume reuses
    _cli(root, *args)
    assert _fingerprint(root, "d") == reference


_REF: dict = {}


def _reference(tmp_path_factory):
    if "d" not in _REF:
        root = tmp_path_factory.mktemp("reference")
        _cli(root, *DIGITS, "-n", "d", "--on-disk", "--max-memory", "1MB")
        _REF["d"] = _fingerprint(root, "d")
    return _REF["d"]


@pytest.mark.slow
def test_kill_9_during_add_resumes_to_the_uninterrupted_add(tmp_path):
    images = _folder(tmp_path / "images", 500)
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        _cli(root, str(images), *FOLDER, "--on-disk")
    _folder(images, 300, start=500)
    _cli(a, str(images), *FOLDER, "--add")
    _cli(b, str(images), *FOLDER, "--add", crash_at="after-rename:index.faiss")
    _cli(b, str(images), *FOLDER, "--add")
    assert _fingerprint(a, "f") == _fingerprint(b, "f")
    assert [f.name for f in (b / "f").glob("lists.*")] == ["lists.0002.ivfdata"]


def test_auto_goes_on_disk_when_no_in_memory_index_fits_and_meets_the_target(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedsearch.build import BuildConfig, build_index
    from embedsearch.evaluate.quality import quality
    from embedsearch.sources.datasets import open_source
    from tests.test_ann import clustered

    n, d = 20_000, 32
    np.save(tmp_path / "v.npy", clustered(n, d))
    pq.write_table(pa.table({"label": [f"c{i % 10}" for i in range(n)]}), tmp_path / "m.parquet")
    src = open_source(str(tmp_path / "m.parquet"), require_paths=False)
    # 150 kB: less than the smallest in-memory candidate (4-bit PQ: ≥ 9 bytes a vector + the centroids = 245 kB)
    build_index(src, BuildConfig.of(name="a", root=str(tmp_path / "ix"), vectors=str(tmp_path / "v.npy"),
                                 dtype="float32", index="auto", max_memory=150_000, target_recall=0.9),
                progress=False)
    ix = Index.open("a", tmp_path / "ix")
    fa = ix.manifest.faiss
    assert fa.lists_file and fa.factory == "IVF512,Flat" and fa.extra["auto"]["on_disk"]
    assert fa.extra["auto"]["met"] and ix.faiss.nprobe == fa.params["nprobe"] > 1
    assert (tmp_path / "ix" / "a" / "index.faiss").stat().st_size <= 150_000  # what stays in memory
    q = quality(ix, n_queries=300)  # other queries than the tuning ones (another seed)
    assert q["recall"]["10-recall@10"] >= 0.87
    ix.close()


def test_vectors_by_id_read_only_the_parts_that_hold_them(tmp_path, monkeypatch):
    from embedsearch import reader
    from embedsearch.query.search import search

    root = tmp_path / "ix"
    _cli(root, *DIGITS, "-n", "d", "--on-disk", "--max-memory", "1MB")
    ix = Index.open("d", root)
    read = []
    real = reader.store.read_part
    monkeypatch.setattr(reader.store, "read_part", lambda p, **kw: read.append(p.name) or real(p, **kw))
    one = int(ix.con.execute("SELECT id FROM items WHERE part = 7 LIMIT 1").fetchone()[0])
    hits = search(ix, ids=[one], k=5)
    assert len(hits) == 5 and set(read) == {"part-00007.parquet"}  # 1 of 12 parts, never the lists file
    read.clear()
    two = ix.con.execute("SELECT id FROM items WHERE part IN (2, 9) AND id % 7 = 0").fetchall()
    v = ix.vectors(np.asarray([r[0] for r in two]))
    assert len(v) == len(two) and set(read) == {"part-00002.parquet", "part-00009.parquet"}
    ix.close()
