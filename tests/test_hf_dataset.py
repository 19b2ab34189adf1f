"""`hf-dataset:DIR` (#29 item 4) on a real dataset written by the real `datasets` library: 150 of the UCI handwritten
digits (scikit-learn's `load_digits`, CC BY 4.0) as PNG images with a ClassLabel, in train/validation/test, saved
with `DatasetDict.save_to_disk` and in the Hub's Parquet layout (tests/data/real/hf_dataset/, rebuilt by
build_digits.py there). Their pixels are the built-in `digits` source's, so every stored vector must equal the one
the built-in source gets for the same digit."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source

DATA = Path(__file__).parent / "data" / "real" / "hf_dataset"
SAVED, HUB = DATA / "digits_saved", DATA / "digits_hub"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLITS = {"train": 100, "val": 20, "test": 30}  # `validation` is recorded as `val`, as folders and manifests have it


def _index(*args):
    r = CliRunner().invoke(cli, ["-q", "index", *map(str, args), "-b", "pixels:8", "--workers", "0", "--json"])
    assert "Traceback" not in r.output, r.output
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().target


def _items(name, root) -> dict[int, tuple]:
    """{digits_index: (label, split, vector)} of an index of the digits dataset."""
    ix = Index.open(name, root)
    _, rows = ix.sql("SELECT id, digits_index, label, split FROM items WHERE status = 'ok' ORDER BY id")
    vecs = ix.vectors(np.asarray([r[0] for r in rows], np.int64))
    ix.close()
    return {i: (label, split, v) for (_, i, label, split), v in zip(rows, vecs)}


@pytest.mark.parametrize("layout", [SAVED, HUB], ids=["save_to_disk", "hub-parquet"])
def test_a_real_saved_dataset_is_indexed_with_its_labels_and_splits(layout, digits, index_root):
    r, s = _index(f"hf-dataset:{layout}", "--name", "hf")
    assert r.exit_code == 0, r.output
    assert (s["items"], s["embedded"], s["failed"]) == (150, 150, 0)
    got = _items("hf", index_root)
    assert len(got) == 150
    from collections import Counter

    assert Counter(sp for _, sp, _ in got.values()) == SPLITS
    assert all(label == NAMES[digits[i]] for i, (label, _, _) in got.items())  # the ClassLabel's names
    assert _index("digits", "--name", "builtin")[0].exit_code == 0
    builtin = Index.open("builtin", index_root)
    want = builtin.vectors(np.asarray(sorted(got), np.int64))  # the built-in source's ids are load_digits indexes
    builtin.close()
    np.testing.assert_array_equal(np.stack([got[i][2] for i in sorted(got)]), want)


def test_one_saved_dataset_and_the_split_option():
    one = open_source(f"hf-dataset:{SAVED}/train")  # a Dataset's save_to_disk folder: no splits of its own
    assert len(one.records) == 100 and {r.split for r in one.records} == {None}
    assert one.classes == NAMES
    for spec, n in ((f"hf-dataset:{HUB}?split=test", 30), (f"hf-dataset:{HUB}?split=validation", 20),
                    (f"hf-dataset:{SAVED}?split=val", 20), (f"hf-dataset:{SAVED}?split=train+test", 130)):
        assert len(open_source(spec).records) == n, spec
    unlabelled = open_source(f"hf-dataset:{HUB}?split=test&label=none")
    assert {r.label for r in unlabelled.records} == {None} and unlabelled.classes == []


def _parquet_without_images(tmp_path) -> Path:
    import pyarrow.parquet as pq

    d = tmp_path / "no_image" / "data"
    d.mkdir(parents=True)
    t = pq.read_table(HUB / "data" / "test-00000-of-00001.parquet")
    pq.write_table(t.drop_columns(["image"]), d / "test-00000-of-00001.parquet")
    return d.parent


def test_bad_input_is_one_line_naming_what_is_there(tmp_path, index_root):
    cases = [
        (f"hf-dataset:{HUB}?split=dev", ["no split 'dev'", "train, validation, test"]),
        (f"hf-dataset:{HUB}?label=fine_label", ["no label column 'fine_label'", "digits_index (int32)"]),
        (f"hf-dataset:{HUB}?image=label", ["column 'label' is int64, not an image"]),
        (f"hf-dataset:{_parquet_without_images(tmp_path)}", ["no image column", "label (int64), digits_index"]),
        (f"hf-dataset:{HUB}?colour=red", ["unknown option 'colour'", "split, label, image, config"]),
        (f"hf-dataset:{DATA}", ["no dataset here", "digits_hub, digits_saved"]),
        (f"hf-dataset:{tmp_path / 'nowhere'}", ["is not a directory"]),
    ]
    for spec, words in cases:
        r, _ = _index(spec, "--name", "bad")
        assert r.exit_code == 1, (spec, r.output)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (spec, r.stderr)
        assert all(w in r.stderr for w in words), (spec, r.stderr)


def test_thumbnails_read_the_row_of_the_data_file(index_root):
    """An item's path is FILE/COLUMN/ROW below the dataset: reports and the server read that row's image."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from embedsearch.report.html import Thumbnails
    from embedsearch.sources.images import ImageLoadError, load_image

    r, _ = _index(f"hf-dataset:{HUB}?split=test", "--name", "t")
    assert r.exit_code == 0, r.output
    ix = Index.open("t", index_root)
    table = pq.read_table(HUB / "data" / "test-00000-of-00001.parquet")
    thumbs = Thumbnails(ix)
    sel = ix.select()
    for item_id, path in zip(sel["id"], sel["path"]):
        assert path.startswith("data/test-00000-of-00001.parquet/image/")
        row = int(path.rsplit("/", 1)[1])
        want = np.asarray(Image.open(io.BytesIO(table.column("image")[row]["bytes"].as_py())).convert("RGB"))
        assert np.array_equal(np.asarray(thumbs.image(int(item_id), path, strict=True)), want)
    ix.close()
    with pytest.raises(ImageLoadError) as e:
        load_image(HUB / "data" / "test-00000-of-00001.parquet" / "image" / "30", HUB)
    assert e.value.kind == "NoSuchRow"


def test_a_dataset_in_the_hugging_face_hub_cache(tmp_path, monkeypatch, index_root):
    """`hf-dataset:OWNER/NAME` reads the snapshot `huggingface_hub` left in its cache: files that are links to
    content-addressed blobs outside the snapshot folder (which must be followed)."""
    cache = tmp_path / "hub"
    repo = cache / "datasets--uci--digits"
    rev = "0123456789abcdef0123456789abcdef01234567"
    for f in sorted((HUB / "data").iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = repo / "snapshots" / rev / "data" / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    r, s = _index("hf-dataset:uci/digits", "--name", "cached")
    assert r.exit_code == 0, r.output
    assert (s["items"], s["embedded"], s["failed"]) == (150, 150, 0)
    assert Index.open("cached", index_root).manifest.source["root"] == str(repo / "snapshots" / rev)


def test_the_datasets_library_reads_what_we_read(tmp_path, digits, index_root):
    """Cross-check with the `datasets` library itself: its `load_from_disk` labels, and the cache `load_dataset`
    writes (Arrow files named NAME-SPLIT.arrow; an `imagefolder` cache stores only each image's path)."""
    datasets = pytest.importorskip("datasets")

    dd = datasets.load_from_disk(str(SAVED))
    ours = {r.meta["digits_index"]: (r.label, r.split) for r in open_source(f"hf-dataset:{SAVED}").records}
    for split, ds in dd.items():
        names = ds.features["label"].int2str(ds["label"])
        for i, name in zip(ds["digits_index"], names):
            assert ours[i] == (name, {"validation": "val"}.get(split, split))

    files = {s: str(f) for s in ("train", "test") for f in (HUB / "data").glob(f"{s}-*.parquet")}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    cache_dir = Path(ds["train"].cache_files[0]["filename"]).parent
    src = open_source(f"hf-dataset:{cache_dir}")
    assert {r.meta["digits_index"]: (r.label, r.split) for r in src.records} == \
        {i: v for i, v in ours.items() if v[1] != "val"}

    samples = Path(__import__("sklearn.datasets", fromlist=["x"]).__file__).parent / "images"  # real JPEGs
    for cls in ("china", "flower"):
        for i in range(2):
            (tmp_path / "photos" / "train" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(samples / f"{cls}.jpg", tmp_path / "photos" / "train" / cls / f"{i}.jpg")
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "photos"), cache_dir=str(tmp_path / "cache"))
    assert ds["train"].data.column("image")[0]["bytes"].as_py() is None  # the cache names the file only
    cache_dir = Path(ds["train"].cache_files[0]["filename"]).parent
    r, s = _index(f"hf-dataset:{cache_dir}", "--name", "photos")
    assert r.exit_code == 0 and (s["embedded"], s["failed"]) == (4, 0), r.output
    assert sorted(Index.open("photos", index_root).select()["label"]) == ["china", "china", "flower", "flower"]


def test_parquet_files_without_their_features_take_them_from_the_dataset_card(tmp_path):
    """Parquet uploaded without the `datasets` library has no features of its own: the class names are the card's
    (README.md YAML, as the Hub shows them); without a card the labels are the integers."""
    import pyarrow.parquet as pq

    bare = tmp_path / "bare"
    (bare / "data").mkdir(parents=True)
    for f in (HUB / "data").iterdir():
        t = pq.read_table(f)
        pq.write_table(t.replace_schema_metadata(None), bare / "data" / f.name)
    assert pq.read_schema(bare / "data" / "test-00000-of-00001.parquet").metadata is None
    plain = open_source(f"hf-dataset:{bare}?split=test")
    shutil.copyfile(HUB / "README.md", bare / "README.md")
    named = open_source(f"hf-dataset:{bare}?split=test")
    want = {r.meta["digits_index"]: r.label for r in open_source(f"hf-dataset:{HUB}?split=test").records}
    assert {r.meta["digits_index"]: r.label for r in named.records} == want
    assert {r.meta["digits_index"]: r.label for r in plain.records} == \
        {i: str(NAMES.index(v)) for i, v in want.items()}


def test_a_column_of_label_lists_is_one_line(tmp_path, index_root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "multi" / "data"
    d.mkdir(parents=True)
    t = pq.read_table(HUB / "data" / "test-00000-of-00001.parquet")
    lists = pa.array([[v] for v in t.column("label").to_pylist()], pa.list_(pa.int64()))
    pq.write_table(t.drop_columns(["label"]).append_column("labels", lists), d / "test-00000-of-00001.parquet")
    r, _ = _index(f"hf-dataset:{d.parent}", "--name", "multi")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
    assert "label column 'labels' is list<" in r.stderr and "?label=none" in r.stderr
