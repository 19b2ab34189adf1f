"""Manifests and folders as users have them (#29 item 3), on real JPEGs: scikit-learn's two sample photographs
(sklearn/datasets/images/china.jpg and flower.jpg, Flickr, CC BY 2.0, shipped in the package we depend on), copied
byte for byte into a CIFAR-style tree. The manifest is the most common one there is: `path,label,split` with
absolute paths, kept in another folder than the images."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.reader import Index

SAMPLES = Path(__import__("sklearn.datasets", fromlist=["x"]).__file__).parent / "images"
CLASSES = ("china", "flower")


@pytest.fixture
def shared(tmp_path) -> list[tuple[Path, str, str]]:
    """tmp/data/cifar10/{train,test}/{china,flower}/000N.jpg: (path, label, split) of 6 real JPEGs."""
    rows = []
    for split, n in (("train", 2), ("test", 1)):
        for cls in CLASSES:
            for i in range(n):
                p = tmp_path / "data" / "cifar10" / split / cls / f"{i + 1:04d}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SAMPLES / f"{cls}.jpg", p)
                rows.append((p, cls, split))
    return rows


def _csv(path: Path, rows, header="path,label,split") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _index(*args):
    r = CliRunner().invoke(cli, ["-q", "index", *map(str, args), "-b", "pixels:8", "--workers", "0", "--json"])
    assert "Traceback" not in r.output, r.output
    summary = json.loads(r.stdout) if r.stdout.strip().startswith("{") else None
    return r, summary


def _by_path(name: str, root: Path) -> dict[str, tuple]:
    """{path: (label, split, vector)} of an index's embedded items."""
    ix = Index.open(name, root)
    sel = ix.select()
    vecs = ix.vectors(sel["id"])
    out = {p: (lab, sp, v) for p, lab, sp, v in zip(sel["path"], sel["label"], sel["split"], vecs)}
    ix.close()
    return out


def test_a_manifest_of_absolute_paths_embeds_every_row(shared, tmp_path, index_root):
    """The regression: every row failed `… resolves outside the dataset root .` and `index` exited 0. Each row is now
    embedded with its label and split, to the very vector the same file gets in a folder index, and its
    thumbnail is read through the recorded root."""
    from embedsearch.report.html import Thumbnails
    from embedsearch.sources.images import load_image

    manifest = _csv(tmp_path / "lists" / "cifar10.csv", shared)
    r, s = _index(manifest, "--name", "abs")
    assert r.exit_code == 0, r.output
    assert (s["items"], s["embedded"], s["failed"], s["failures"]) == (6, 6, 0, [])
    folder = tmp_path / "data" / "cifar10"
    assert _index(folder, "--name", "folder")[0].exit_code == 0
    got, want = _by_path("abs", index_root), _by_path("folder", index_root)
    assert sorted(got) == sorted(str(p) for p, _, _ in shared)  # recorded as the absolute paths they are
    for p, label, split in shared:
        lab, sp, v = got[str(p)]
        assert (lab, sp) == (label, split)
        np.testing.assert_array_equal(v, want[p.relative_to(folder).as_posix()][2])
    ix = Index.open("abs", index_root)
    assert ix.manifest.source["root"] == str(folder)  # the folder the images share: what thumbnails read through
    thumbs = Thumbnails(ix)
    for item_id, path in zip(*(ix.select()[k] for k in ("id", "path"))):
        img = thumbs.image(int(item_id), path, strict=True)
        assert np.array_equal(np.asarray(img), np.asarray(load_image(path)))
    ix.close()


def test_file_uris_and_paths_relative_to_the_manifest_or_data_root(shared, tmp_path, index_root):
    """`file://` URIs (percent-encoded: a space and a non-ASCII letter in the folder name) name the same files, with
    the same ids, as their absolute paths; relative paths are relative to the manifest's folder (`../data/…`, which
    used to fail as outside the root) or to --data-root."""
    odd = tmp_path / "café photos"
    shutil.copytree(tmp_path / "data", odd)
    files = [(odd / p.relative_to(tmp_path / "data"), lab, sp) for p, lab, sp in shared]
    uris = [(p.as_uri(), lab, sp) for p, lab, sp in files]
    assert "%20" in uris[0][0] and "%C3%A9" in uris[0][0]
    uris[0] = ("file://localhost" + uris[0][0][len("file://"):], *uris[0][1:])
    r, s = _index(_csv(tmp_path / "lists" / "uris.csv", uris), "--name", "uris")
    assert r.exit_code == 0 and (s["embedded"], s["failed"]) == (6, 0), r.output
    r, s = _index(_csv(tmp_path / "lists" / "plain.csv", files), "--name", "plain")
    assert r.exit_code == 0 and s["embedded"] == 6, r.output
    ids = {n: set(Index.open(n, index_root).select()["id"].tolist()) for n in ("uris", "plain")}
    assert ids["uris"] == ids["plain"]  # the same file is the same item, however it is written

    rel = [(os.path.relpath(p, tmp_path / "lists"), lab, sp) for p, lab, sp in shared]
    assert rel[0][0].startswith("../data/cifar10/")
    r, s = _index(_csv(tmp_path / "lists" / "relative.csv", rel), "--name", "relative")
    assert r.exit_code == 0 and (s["embedded"], s["failed"]) == (6, 0), r.output
    under = [(p.relative_to(tmp_path / "data" / "cifar10").as_posix(), lab, sp) for p, lab, sp in shared]
    r, s = _index(_csv(tmp_path / "elsewhere" / "under.csv", under), "--data-root", tmp_path / "data" / "cifar10",
                  "--name", "under")
    assert r.exit_code == 0 and (s["embedded"], s["failed"]) == (6, 0), r.output
    labels = {p: lab for p, (lab, _, _) in _by_path("under", index_root).items()}
    assert labels == {p: lab for p, lab, _ in under}  # relative paths are recorded as written, as before


def test_a_remote_url_in_a_manifest_is_one_line(tmp_path, index_root):
    m = _csv(tmp_path / "s3.csv", [("s3://bucket/cifar10/train/cat/0001.jpg", "cat", "train")])
    r, _ = _index(m, "--name", "s3")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "line 2" in r.stderr and "s3://" in r.stderr and "local files" in r.stderr


def test_an_imagenet_style_folder_of_links_to_shared_storage(tmp_path, index_root):
    """Class folders and images that are symlinks to shared storage are followed (they failed as outside the root,
    and linked folders were not even listed); a link loop still fails with its reason, and a folder that links
    back to its parent is left out, said in the source notes."""
    from embedsearch.report.html import Thumbnails

    store = tmp_path / "shared" / "imagenet"
    for cls in ("n01440764", "n02102040"):
        for i, name in enumerate(CLASSES):
            (store / cls).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SAMPLES / f"{name}.jpg", store / cls / f"{cls}_{i}.JPEG")
    ds = tmp_path / "imagenet" / "train"
    ds.mkdir(parents=True)
    (ds / "n01440764").symlink_to(store / "n01440764")  # a linked class folder
    (ds / "n02102040").mkdir()
    for f in sorted((store / "n02102040").iterdir()):  # linked images
        (ds / "n02102040" / f.name).symlink_to(f)
    (ds / "n02102040" / "loop.JPEG").symlink_to(ds / "n02102040" / "loop.JPEG")
    (ds / "n01440764_again").symlink_to(ds)  # leads back to train/: a loop of folders
    r, s = _index(tmp_path / "imagenet", "--name", "inet")
    assert r.exit_code == 0, r.output
    assert (s["items"], s["embedded"], s["failed"]) == (5, 4, 1)
    assert [(g["reason"], g["count"]) for g in s["failures"]] == [("path/SymlinkLoop", 1)]
    assert "path/SymlinkLoop" in r.stderr and "loop.JPEG" in r.stderr
    ix = Index.open("inet", index_root)
    assert any("loop" in n and "n01440764_again" in n for n in ix.manifest.source["notes"])
    sel = ix.select()
    assert sorted(set(sel["label"])) == ["n01440764", "n02102040"]
    thumbs = Thumbnails(ix)
    assert all(thumbs.image(int(i), p, strict=True) is not None for i, p in zip(sel["id"], sel["path"]))
    ix.close()


def _broken(tmp_path, shared):
    """Rows that fail: 4 moved files (FileNotFoundError) and a text file named .jpg (UnidentifiedImage)."""
    moved = [(Path(str(p).replace("/data/", "/moved/")), lab, sp) for p, lab, sp in shared[:4]]
    text = tmp_path / "data" / "notes.jpg"
    text.write_text("not an image")
    return moved, [(text, "china", "train")]


def test_nothing_embedded_exits_1_with_failures_grouped_by_reason(shared, tmp_path, index_root):
    moved, text = _broken(tmp_path, shared)
    r, s = _index(_csv(tmp_path / "lists" / "gone.csv", moved + text), "--name", "gone")
    assert r.exit_code == 1, r.output
    assert (s["items"], s["embedded"], s["failed"]) == (5, 0, 5)
    groups = {g["reason"]: g for g in s["failures"]}
    assert list(groups) == ["path/FileNotFoundError", "decode/UnidentifiedImage"]  # the largest group first
    nf = groups["path/FileNotFoundError"]
    assert nf["count"] == 4 and nf["examples"] == sorted(str(p) for p, _, _ in moved)[:3]
    assert "no such file" in nf["error"]
    assert groups["decode/UnidentifiedImage"]["examples"] == [str(text[0][0])]
    err = r.stderr
    assert "5 of 5 items could not be embedded (2 reasons)" in err
    assert "4  path/FileNotFoundError" in err and "1  decode/UnidentifiedImage" in err
    assert sum(str(p) in err for p, _, _ in moved) == 3  # three examples, not every row
    assert "error: nothing could be embedded" in err


def test_a_partial_failure_exits_0_with_the_same_summary(shared, tmp_path, index_root):
    moved, text = _broken(tmp_path, shared)
    r, s = _index(_csv(tmp_path / "lists" / "some.csv", shared + moved[:2] + text), "--name", "some")
    assert r.exit_code == 0, r.output
    assert (s["items"], s["embedded"], s["failed"]) == (9, 6, 3)
    assert [(g["reason"], g["count"]) for g in s["failures"]] == [("path/FileNotFoundError", 2),
                                                                  ("decode/UnidentifiedImage", 1)]
    assert "3 of 9 items could not be embedded (2 reasons)" in r.stderr and "error:" not in r.stderr


def test_an_add_whose_new_items_all_fail_exits_1(shared, tmp_path, index_root):
    assert _index(_csv(tmp_path / "lists" / "a.csv", shared), "--name", "grow")[0].exit_code == 0
    moved, _ = _broken(tmp_path, shared)
    r, s = _index(_csv(tmp_path / "lists" / "b.csv", shared + moved[:2]), "--name", "grow", "--add")
    assert r.exit_code == 1, r.output
    assert (s["embedded"], s["embedded_this_run"], s["failed"]) == (6, 0, 2)
    assert "none of the 2 items this run tried could be embedded" in r.stderr
