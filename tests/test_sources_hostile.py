"""Hostile sources (issue #28 F10, F12, F16, F17): webdataset shards with repeated member names, links, devices,
FIFOs, names that are not UTF-8 or leave the shard; thumbnails that must not rescan a shard per image; manifest
columns spelled `Label`, `PATH`, `Status`. Shards are real tar files written with tarfile, indexed for real."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from embedsearch.core.errors import SourceError
from embedsearch.sources import shards
from embedsearch.sources.datasets import open_source, path_id
from embedsearch.sources.images import ImageLoadError, load_image


def _png(color, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf, name, data: bytes = b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)


def _mean(img) -> tuple:
    return tuple(int(round(x)) for x in np.asarray(img, np.float64).mean(axis=(0, 1)))


@pytest.fixture(autouse=True)
def _fresh_member_cache():
    shards._indexes.clear()
    yield
    shards._indexes.clear()


def hostile_shard(d):
    """One GNU tar (raw name bytes, as old archivers write them) with every kind of member a reader must not
    trust, between three good samples."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / "00000.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        _add(tf, "good.png", _png(GREEN))
        _add(tf, "good.cls", b"g")
        _add(tf, "dup.png", _png(RED))            # the item: first of its name
        _add(tf, "dup.txt", b"first caption")
        _add(tf, "dup.json", json.dumps({"url": "https://a.example/1", "Label": "not the label"}).encode())
        _add(tf, "evil.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "hard.png", kind=tarfile.LNKTYPE, link="good.png")
        _add(tf, "null.png", kind=tarfile.CHRTYPE)
        _add(tf, "pipe.png", kind=tarfile.FIFOTYPE)
        _add(tf, "caf\udce9.png", _png(GREEN))   # b"caf\xe9.png": Latin-1, not UTF-8
        _add(tf, "../up.png", _png(GREEN))
        _add(tf, "/abs.png", _png(GREEN))
        _add(tf, "dup.png", _png(BLUE))           # repeats: never the item, never the thumbnail
        _add(tf, "dup.txt", b"second caption")
        _add(tf, "other.png", _png(BLUE))
        _add(tf, "other.json", json.dumps({"URL": "https://b.example/2"}).encode())
    return path


def test_hostile_shard_indexes_the_good_members_and_notes_every_skip(tmp_path):
    """F10 + F12 through the CLI: no traceback; the repeated, link, device, FIFO, non-UTF-8 and escaping members are
    skipped with their reason in the notes; the thumbnail of `dup.png` is the member its vector came from."""
    d = tmp_path / "shards"
    hostile_shard(d)
    env = {**os.environ, "EMBEDSEARCH_HOME": str(tmp_path / "ix")}
    p = subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(d / "00000.tar"), "-b", "pixels:4",
                        "-n", "wds", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    summary = json.loads(p.stdout)
    assert summary["items"] == 3 and summary["embedded"] == 3 and summary["failed"] == 0

    notes = json.loads((tmp_path / "ix" / "wds" / "manifest.json").read_text())["source"]["notes"]
    skipped = next(n for n in notes if n.startswith("skipped"))
    for reason in ("2 duplicate member name (e.g. 00000.tar/dup.png)", "symbolic link (e.g. 00000.tar/evil.png → "
                   "/etc/passwd)", "hard link", "device", "FIFO", "not valid UTF-8 (e.g. 00000.tar/caf\\xe9.png)",
                   "2 absolute or parent-relative name"):
        assert reason in skipped, skipped
    assert any("'URL' differs from 'url' only in case" in n for n in notes), notes

    from embedsearch.reader import Index
    from embedsearch.report.html import Thumbnails

    ix = Index.open("wds", tmp_path / "ix")
    cols = [r[0] for r in ix.con.execute("DESCRIBE items").fetchall()]
    assert {"url", "URL_2", "json_Label"} <= set(cols) and not any(c.endswith("_1") for c in cols), cols
    rows = {r[0]: r[1:] for r in ix.con.execute(
        "SELECT key, id, path, caption, label, tar_offset FROM items").fetchall()}
    assert set(rows) == {"good", "dup", "other"}
    rid, rpath, caption, label, offset = rows["dup"]
    assert rid == path_id("00000.tar/dup") and rpath == "00000.tar/dup.png" and caption == "first caption"
    assert rows["good"][3] == "g" and label is None
    with tarfile.open(d / "00000.tar", encoding="utf-8", errors="surrogateescape") as tf:
        first = next(m for m in tf.getmembers() if m.name == "dup.png")
    assert offset == first.offset_data
    # the report's thumbnail reader (path only, no offset) shows the red first member, like the vector
    thumbs = Thumbnails(ix)
    assert _mean(thumbs.image(rid, rpath)) == RED
    # a link member is never followed, whatever a catalog path names
    assert thumbs.image(path_id("00000.tar/evil"), "00000.tar/evil.png") is None
    with pytest.raises(ImageLoadError, match="no member evil.png"):
        load_image(d / "00000.tar" / "evil.png", d)


def test_repeated_member_name_first_is_the_item_its_caption_and_its_thumbnail(tmp_path):
    """F10: the vector, the caption and the thumbnail (path only) all come from the first `dup.png`/`dup.txt`."""
    d = tmp_path / "s"
    d.mkdir()
    with tarfile.open(d / "0.tar", "w") as tf:
        _add(tf, "dup.png", _png(RED))
        _add(tf, "dup.txt", b"first caption")
        _add(tf, "dup.png", _png(BLUE))
        _add(tf, "dup.txt", b"second caption")
        _add(tf, "./dup.png", _png(GREEN))  # the same path below the shard
    src = open_source(str(d / "0.tar"))
    assert len(src.records) == 1
    r = src.records[0]
    assert r.path == "0.tar/dup.png" and r.meta["caption"] == "first caption"
    by_offset = load_image(d / r.path, d, (r.meta["tar_offset"], r.meta["tar_size"]))
    assert _mean(by_offset) == _mean(load_image(d / r.path, d)) == RED
    assert any("3 duplicate member name (e.g. 0.tar/dup.png)" in n for n in src.notes), src.notes


def test_link_device_and_fifo_members_are_skipped_with_their_reason(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    with tarfile.open(d / "0.tar", "w") as tf:
        _add(tf, "good.png", _png(GREEN))
        _add(tf, "evil.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "hard.png", kind=tarfile.LNKTYPE, link="good.png")
        _add(tf, "disk.png", kind=tarfile.BLKTYPE)
        _add(tf, "pipe.png", kind=tarfile.FIFOTYPE)
    src = open_source(str(d / "0.tar"))
    assert [r.path for r in src.records] == ["0.tar/good.png"]
    note = next(n for n in src.notes if n.startswith("skipped 4 shard members"))
    assert all(x in note for x in ("1 symbolic link (e.g. 0.tar/evil.png → /etc/passwd)",
                                   "1 hard link (e.g. 0.tar/hard.png → good.png)", "1 device", "1 FIFO")), note
    assert not any("keys have no image" in n for n in src.notes)  # said once, with the reason
    for name in ("evil.png", "hard.png"):
        with pytest.raises(ImageLoadError, match=f"no member {name}"):
            load_image(d / "0.tar" / name, d)


def test_only_unreadable_members_is_one_line_naming_why(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    with tarfile.open(d / "0.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        _add(tf, "a.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "b\udcff.png", _png(RED))
    with pytest.raises(SourceError, match=r"no images .* symbolic link .*not valid UTF-8") as e:
        open_source(str(d / "0.tar"))
    assert "\n" not in str(e.value)


def test_shard_file_name_not_utf8_is_one_line(tmp_path):
    shard = tmp_path / os.fsdecode(b"caf\xe9.tar")
    with tarfile.open(shard, "w") as tf:
        _add(tf, "a.png", _png(RED))
    with pytest.raises(SourceError, match=r"caf\\xe9\.tar: its name is not valid UTF-8"):
        open_source(str(shard))


def test_thumbnails_read_a_shards_headers_once(tmp_path, monkeypatch):
    """F16: 20 thumbnails of one shard (paths only, as reports and the server ask) scan its headers once; a shard
    rewritten in place is scanned again, so its new members are read, not stale offsets."""
    d = tmp_path / "s"
    d.mkdir()
    shard = d / "00000.tar"
    with tarfile.open(shard, "w") as tf:
        for i in range(40):
            _add(tf, f"k{i:03d}.png", _png((i * 6, 0, 0)))
            _add(tf, f"k{i:03d}.txt", b"caption")
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for i in range(0, 40, 2):
        assert _mean(load_image(d / f"00000.tar/k{i:03d}.png", d)) == (i * 6, 0, 0)
    assert len(opened) == 1

    with real_open(shard, "w") as tf:  # same name, new content
        _add(tf, "k000.png", _png(BLUE, size=(30, 30)))
    os.utime(shard, ns=(1, 1))
    assert _mean(load_image(d / "00000.tar/k000.png", d)) == BLUE and len(opened) == 2
    with pytest.raises(ImageLoadError, match="no member k002.png"):
        load_image(d / "00000.tar/k002.png", d)


def test_member_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_INDEX_BUDGET", 5)
    for s in range(3):
        with tarfile.open(tmp_path / f"{s}.tar", "w") as tf:
            for i in range(3):
                _add(tf, f"{i}.png", _png(RED))
        load_image(tmp_path / f"{s}.tar" / "0.png", tmp_path)
    assert len(shards._indexes) == 1  # 3 members each: only the newest shard's fit in 5


@pytest.mark.parametrize("header", ["path,Label,split", "PATH,label,Split", "Path,LABEL,SPLIT"])
def test_manifest_fields_match_in_any_case(tmp_path, header):
    """F17: a `Label` column is the label (it was stored as `Label_1`, the index unlabelled)."""
    (tmp_path / "a.png").write_bytes(_png(RED))
    (tmp_path / "b.png").write_bytes(_png(BLUE))
    m = tmp_path / "m.csv"
    m.write_text(f"{header},score\na.png,red,test,1\nb.png,blue,train,2\n")
    src = open_source(str(m))
    assert [(r.path, r.label, r.split, r.meta) for r in src.records] == [
        ("a.png", "red", "test", {"score": "1"}), ("b.png", "blue", "train", {"score": "2"})]
    assert src.classes == ["blue", "red"] and src.records[0].id == path_id("a.png")


def test_manifest_label_column_reaches_the_catalog(tmp_path, index_root):
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.reader import Index

    (tmp_path / "a.png").write_bytes(_png(RED))
    (tmp_path / "b.png").write_bytes(_png(BLUE))
    m = tmp_path / "m.csv"
    m.write_text("Path,Label,ID\na.png,red,7\nb.png,blue,9\n")
    build_index(open_source(str(m)), BuildConfig.of(name="lab", backbone="pixels:4"), progress=False)
    ix = Index.open("lab")
    cols = [r[0] for r in ix.con.execute("DESCRIBE items").fetchall()]
    assert not any(c.lower().startswith(("label_", "path_", "id_")) for c in cols), cols
    assert ix.con.execute("SELECT id, label, class_index FROM items ORDER BY id").fetchall() == [
        (7, "red", 1), (9, "blue", 0)]


@pytest.mark.parametrize("header,match", [
    ("path,label,Label", r"columns 'label' and 'Label' both name the label field"),
    ("path,Path,label", r"columns 'path' and 'Path' both name the path field"),
    ("path,score,SCORE", r"columns 'score' and 'SCORE' differ only in case"),
    ("path,Status", r"column 'Status' has the name of the catalog column 'status'"),
    ("path,width", r"column 'width' has the name of the catalog column 'width'"),
])
def test_manifest_columns_sql_cannot_tell_apart_are_one_line(tmp_path, header, match):
    m = tmp_path / "m.csv"
    m.write_text(header + "\n" + ",".join(["a.png"] + ["x"] * header.count(",")) + "\n")
    with pytest.raises(SourceError, match=match) as e:
        open_source(str(m))
    assert "\n" not in str(e.value) and str(m) in str(e.value)
