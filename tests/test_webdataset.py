"""webdataset shards written by the test (img2dataset layout): ids from shard and key, captions, JSON fields and
labels in the catalog, a corrupt member and a truncated shard recorded, not fatal."""

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
from embedsearch.sources.datasets import open_source, path_id
from embedsearch.sources.images import load_image
from embedsearch.sources.webdataset import expand_shards


def _png(color, size=(24, 20)) -> bytes:
    rng = np.random.default_rng(sum(color))
    a = np.clip(np.array(color, np.int16) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


COLORS = {"0": (220, 30, 30), "1": (30, 200, 40), "2": (30, 40, 220)}


def write_shards(d, n_shards=3, per=6):
    """shards/{00000..00002}.tar with KEY.png, KEY.txt, KEY.json, KEY.cls; shard 1's sample 3 is not an image."""
    d.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(d / f"{s:05d}.tar", "w") as tf:
            for i in range(per):
                key = f"{s:05d}{i:04d}"
                cls = str(i % 3)
                img = b"this is not an image" if (s, i) == (1, 3) else _png(COLORS[cls])
                _add(tf, f"{key}.png", img)
                _add(tf, f"{key}.txt", f"a photo of class {cls}, sample {key}".encode())
                _add(tf, f"{key}.json", json.dumps({"url": f"https://example.org/{key}.png", "width": 24,
                                                    "similarity": 0.3 + i / 100, "exif": {"k": i}}).encode())
                _add(tf, f"{key}.cls", cls.encode())
    return d


def test_brace_patterns_and_lists():
    assert expand_shards("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_shards("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_shards("x.tar, y.tar") == ["x.tar", "y.tar"]
    with pytest.raises(SourceError, match="bad range"):
        expand_shards("{5..2}.tar")


def test_shards_become_records_with_catalog_fields(tmp_path):
    d = write_shards(tmp_path / "shards")
    src = open_source(str(d / "{00000..00002}.tar"))
    assert src.kind == "webdataset" and len(src.records) == 18 and src.classes == ["0", "1", "2"]
    r = next(r for r in src.records if r.meta["key"] == "000020001")
    assert r.id == path_id("00002.tar/000020001") and r.path == "00002.tar/000020001.png" and r.label == "1"
    assert r.meta["caption"] == "a photo of class 1, sample 000020001"
    assert r.meta["url"] == "https://example.org/000020001.png"
    assert r.meta["json_width"] == 24  # a JSON field named like a catalog column keeps its value under json_
    assert json.loads(r.meta["exif"]) == {"k": 1}
    # the path opens like a file: one seek with the recorded offset, or a header scan without it
    a = np.asarray(load_image(src.root / r.path, src.root, (r.meta["tar_offset"], r.meta["tar_size"])))
    b = np.asarray(load_image(src.root / r.path, src.root))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20, 24, 3)
    # a list of shards is the same source
    again = open_source(",".join(str(d / f"{i:05d}.tar") for i in range(3)))
    assert sorted(x.id for x in again.records) == sorted(x.id for x in src.records)


def test_missing_shard_is_one_line(tmp_path):
    d = write_shards(tmp_path / "shards", n_shards=1)
    with pytest.raises(SourceError, match=r"shard .*00001\.tar does not exist"):
        open_source(str(d / "{00000..00001}.tar"))


def test_index_records_corrupt_member_and_truncated_shard(tmp_path):
    d = write_shards(tmp_path / "shards")
    # cut shard 2 in the middle of its fourth sample's image data
    shard = d / "00002.tar"
    with tarfile.open(shard) as tf:
        cut = tf.getmember("000020003.png")
    data = shard.read_bytes()
    shard.write_bytes(data[:cut.offset_data + cut.size // 2])
    env = {**os.environ, "EMBEDSEARCH_HOME": str(tmp_path / "ix")}
    p = subprocess.run([sys.executable, "-m", "embedsearch", "-q", "index", str(d / "{00000..00002}.tar"),
                        "-b", "pixels:8", "-n", "wds", "--json"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["items"] == 16 and summary["failed"] == 2 and summary["embedded"] == 14
    assert summary["failures_this_run"] == {"decode/UnidentifiedImage": 1, "read/TruncatedShard": 1}

    from embedsearch.reader import Index

    ix = Index.open("wds", tmp_path / "ix")
    rows = ix.con.execute("SELECT key, status, error_type, caption, label, url FROM items ORDER BY key").fetchall()
    by_key = {r[0]: r for r in rows}
    assert by_key["000010003"][1:3] == ("failed", "UnidentifiedImage")
    assert by_key["000020003"][1:3] == ("failed", "TruncatedShard")
    assert "000020004" not in by_key  # after the cut: never listed
    assert by_key["000000001"][1:] == ("ok", None, "a photo of class 1, sample 000000001", "1",
                                      "https://example.org/000000001.png")
    notes = json.loads((tmp_path / "ix" / "wds" / "manifest.json").read_text())["source"]["notes"]
    assert any("00002.tar is truncated" in n for n in notes)
    # search by SQL filter on a caption, and by id, straight from the index
    cols, hits = ix.sql("SELECT id FROM items WHERE caption LIKE '%class 2%' AND status = 'ok'")
    assert len(hits) == 5
