import gzip
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from embedsearch.core.errors import SourceError
from embedsearch.sources.datasets import open_source, path_id


def _idx(path, arr, gz):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_digits_fixed_stratified_split():
    a, b = open_source("digits"), open_source("digits")
    assert len(a.records) == 1797 and a.classes == [str(i) for i in range(10)]
    assert [r.split for r in a.records] == [r.split for r in b.records]
    test = [r for r in a.records if r.split == "test"]
    assert len(test) == 450
    per_class = np.bincount([int(r.label) for r in test])
    assert per_class.min() >= 43 and per_class.max() <= 46  # stratified: ~25 % of each class
    assert a.records[0].array.dtype == np.uint8 and a.records[0].array.max() > 200


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    _idx(tmp_path / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 255, (12, 28, 28)), gz)
    _idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", np.arange(12) % 10, gz)
    _idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 255, (5, 28, 28)), gz)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", np.arange(5) % 10, gz)
    src = open_source(f"mnist:{tmp_path}")
    assert [r.split for r in src.records].count("train") == 12 and [r.id for r in src.records] == list(range(17))
    assert src.records[13].label == "1" and src.records[13].split == "test"


def test_mnist_truncated_file_is_an_error(tmp_path):
    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), False)
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-10])
    _idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), False)
    with pytest.raises(SourceError, match="truncated"):
        open_source(f"mnist:{tmp_path}")


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_python_batches(tmp_path, kind):
    rng = np.random.default_rng(0)
    fine = kind == "cifar100"
    d = tmp_path / ("cifar-100-python" if fine else "cifar-10-batches-py")
    d.mkdir()
    names = [f"class{i}".encode() for i in range(100 if fine else 10)]
    key = b"fine_labels" if fine else b"labels"
    pickle.dump({b"fine_label_names" if fine else b"label_names": names}, open(d / ("meta" if fine else "batches.meta"), "wb"))
    for f in (["train", "test"] if fine else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        pickle.dump({b"data": rng.integers(0, 255, (3, 3072), dtype=np.uint8), key: [1, 2, 3]}, open(d / f, "wb"))
    src = open_source(f"{kind}:{tmp_path}")
    n_train = 3 if fine else 15
    assert sum(r.split == "train" for r in src.records) == n_train and len(src.records) == n_train + 3
    assert src.records[0].label == "class1" and src.records[0].array.shape == (32, 32, 3)
    assert len(src.classes) == (100 if fine else 10)


def test_cifar_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    pickle.dump({b"label_names": [Evil()]}, open(d / "batches.meta", "wb"))
    with pytest.raises(Exception, match="refusing"):
        open_source(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()


def test_folder_with_split_dirs(image_folder):
    src = open_source(str(image_folder))
    assert src.classes == ["blue", "green", "red"]
    assert sum(r.split == "train" for r in src.records) == 24 and sum(r.split == "test" for r in src.records) == 9
    r = next(r for r in src.records if r.path == "train/red/red_3.png")
    assert r.label == "red" and r.id == path_id("train/red/red_3.png")
    assert [x.id for x in open_source(str(image_folder)).records] == [x.id for x in src.records]


def test_label_regex_split_and_min_per_class(tmp_path):
    from tests.conftest import make_image

    for i in range(12):
        make_image(tmp_path / f"Abyssinian_{i}.jpg", (200, 100, 50), seed=i)
    for i in range(3):
        make_image(tmp_path / f"Bombay_{i}.jpg", (10, 10, 10), seed=i)
    src = open_source(str(tmp_path), label_regex=r"^(.*)_\d+\.jpg$", split="test=0.25", seed=0, min_per_class=11)
    assert src.classes == ["Abyssinian"] and len(src.records) == 12
    assert sum(r.split == "test" for r in src.records) == 3
    assert any("dropped 1 classes" in n for n in src.notes)
    again = open_source(str(tmp_path), label_regex=r"^(.*)_\d+\.jpg$", split="test=0.25", seed=0, min_per_class=11)
    assert [r.split for r in again.records] == [r.split for r in src.records]
    other = open_source(str(tmp_path), label_regex=r"^(.*)_\d+\.jpg$", split="test=0.25", seed=1, min_per_class=11)
    assert [r.split for r in other.records] != [r.split for r in src.records]


def test_manifest_csv_and_parquet(tmp_path, image_folder):
    rows = [("train/red/red_0.jpg", "red", "train", 5), ("test/blue/blue_1.png", "blue", "test", 7)]
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split,score\n" + "".join(f"{p},{lab},{s},{x}\n" for p, lab, s, x in rows))
    src = open_source(str(csv), root=str(image_folder))
    assert [r.label for r in src.records] == ["red", "blue"] and src.records[0].meta == {"score": "5"}
    assert src.root == image_folder and src.records[0].id == path_id("train/red/red_0.jpg")
    pq.write_table(pa.table({"path": [r[0] for r in rows], "id": [10, 11], "species": ["a", "b"]}), tmp_path / "m.parquet")
    src = open_source(str(tmp_path / "m.parquet"), root=str(image_folder))
    assert [r.id for r in src.records] == [10, 11] and src.records[1].meta == {"species": "b"}


@pytest.mark.parametrize("content,match", [
    ("file,label\na.jpg,x\n", "no 'path' column"),
    ("path,label\na.jpg,x\na.jpg,y\n", "duplicate path 'a.jpg'"),
    ("path,id\na.jpg,1\nb.jpg,1\n", "duplicate id 1"),
    ("path,id\na.jpg,abc\n", "column 'id' value 'abc'"),
    ("path,label\na.jpg,x\n,y\n", "line 3: empty 'path'"),
    ("", "nothing to do"),
    ("path,label\n", "nothing to do"),
])
def test_manifest_errors_name_the_problem(tmp_path, content, match):
    p = tmp_path / "m.csv"
    p.write_text(content)
    with pytest.raises(SourceError, match=match):
        open_source(str(p))


def test_manifest_bom_crlf_quotes_and_bad_bytes(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(b'\xef\xbb\xbfpath,label\r\n"a,b.jpg",x\r\nc.jpg,y\r\n')
    src = open_source(str(p))
    assert [r.path for r in src.records] == ["a,b.jpg", "c.jpg"]
    p.write_bytes(b"path,label\na.jpg,x\nb.jpg,\xff\n")
    with pytest.raises(SourceError, match="line 3 is not valid UTF-8"):
        open_source(str(p))


def test_split_argument_errors():
    with pytest.raises(SourceError, match="already has splits"):
        open_source("digits", split="test=0.1")


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_text, st.one_of(st.just(""), _text)), min_size=1, max_size=15,
                     unique_by=lambda t: t[0]))
def test_manifest_round_trips_any_text(tmp_path, rows):
    import csv

    # absolute paths, URIs and `..` are resolved on purpose (tests/test_manifests_real.py): text as it stands only
    assume(all(not r[0].startswith(("/", "~")) and "://" not in r[0] and ".." not in r[0] for r in rows))
    p = tmp_path / "m.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    src = open_source(str(p))
    assert [r.path for r in src.records] == [r[0] for r in rows]
    assert [r.label for r in src.records] == [r[1] or None for r in rows]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_manifest_garbage_is_a_source_error_or_a_source(tmp_path, data):
    p = tmp_path / "g.csv"
    p.write_bytes(b"path,label\n" + data)
    try:
        open_source(str(p))
    except SourceError:
        pass


def test_manifest_keeps_paths_and_labels_that_look_like_nulls(tmp_path):
    # found by the round-trip property test: Arrow's default CSV null markers turned a path named "null" into a
    # missing path
    p = tmp_path / "m.csv"
    p.write_text("path,label\nnull,NA\nN/A,nan\nx.png,\n")
    src = open_source(str(p))
    assert [r.path for r in src.records] == ["null", "N/A", "x.png"]
    assert [r.label for r in src.records] == ["NA", "nan", None]


def test_parquet_manifest_without_id_or_path_numbers_rows_from_zero(tmp_path, index_root):
    # the first row used to get id -1, which FAISS reads as "no hit": that item could never be found
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.query.search import search
    from embedsearch.reader import Index

    pq.write_table(pa.table({"label": ["a", "b", "a"]}), tmp_path / "m.parquet")
    vec = np.eye(3, 4, dtype=np.float32) + 0.1
    np.save(tmp_path / "v.npy", vec)
    src = open_source(str(tmp_path / "m.parquet"), require_paths=False)
    assert [r.id for r in src.records] == [0, 1, 2]
    build_index(src, BuildConfig.of(name="rows", vectors=str(tmp_path / "v.npy"), dtype="float32"), progress=False)
    hits = search(Index.open("rows"), vector_file=None, ids=[1], k=2)
    assert 0 in {h["id"] for h in hits}


def test_file_names_that_are_not_utf8_are_skipped_recorded_and_the_rest_indexed(tmp_path):
    """A Latin-1 name (from an old archive) once crashed the whole folder with a UnicodeEncodeError."""
    import os

    from embedsearch.build import BuildConfig, build_index
    from embedsearch.reader import Index
    from tests.conftest import make_image

    root = tmp_path / "img"
    make_image(root / "red" / "fine.png", (200, 0, 0))
    make_image(root / "red" / "caf\u00e9.png", (200, 0, 0), seed=1)  # é in UTF-8: fine
    bad = os.fsdecode(bytes(root / "red") + b"/caf\xe9.png")  # é in Latin-1: not UTF-8
    make_image(root / "blue" / "x.png", (0, 0, 200))
    os.rename(root / "blue" / "x.png", bad)
    make_image(root / "blue" / "y.png", (0, 0, 200), seed=2)
    src = open_source(str(root))
    assert sorted(r.path for r in src.records) == ["blue/y.png", "red/caf\u00e9.png", "red/fine.png"]
    assert src.notes and "skipped 1 files whose names are not valid UTF-8 (e.g. red/caf\\xe9.png)" in src.notes[0]
    build_index(src, BuildConfig.of(name="u", root=str(tmp_path / "ix"), backbone="pixels:4", num_workers=0),
                progress=False)
    ix = Index.open("u", tmp_path / "ix")
    assert len(ix.select()["id"]) == 3 and "not valid UTF-8" in ix.manifest.source["notes"][0]
