"""Readers while a real `embedsearch index --add` process extends the index: they keep working on the last complete
snapshot and never see a part or FAISS file in progress."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from embedsearch import reader
from embedsearch.build import BuildConfig, build_index
from embedsearch.build import pipeline as build
from embedsearch.core.errors import IndexStateError
from embedsearch.query.search import search
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source
from tests.conftest import COLORS, make_image

ARGS = ["-b", "timm:vit_small_patch14_dinov2", "--random-init", "--image-size", "112", "--precision", "fp32",
        "--part-size", "3", "--batch-size", "3", "--workers", "0", "-n", "c"]


def _folder(root, n_per_class, start=0):
    for k, (cls, color) in enumerate(COLORS.items()):
        for i in range(start, n_per_class):
            make_image(root / cls / f"{cls}_{i}.png", color, seed=100 * k + i)


def _index(root, folder, *extra):
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "embedsearch", "-q", "index", str(folder), *ARGS, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_queries_keep_working_while_an_index_is_extended(tmp_path):
    folder, root = tmp_path / "imgs", tmp_path / "indexes"
    _folder(folder, 4)
    p = _index(root, folder)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    first = Index.open("c", root)
    n0 = first.faiss.ntotal
    first.close()
    _folder(folder, 12, start=4)  # 24 new images = 8 new parts
    p = _index(root, folder, "--add")
    seen_snapshot = seen_new = reads = 0
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        ix = Index.open("c", root)
        try:
            served = ix.select()["id"]
            ntotal = ix.faiss.ntotal
            assert ntotal == len(served)  # the FAISS file and the parts it serves agree
            vecs = ix.vectors(served)  # every served item has its vector
            assert np.isfinite(vecs).all()
            hits = search(ix, ids=[int(served[0])], k=5)
            assert {r["id"] for r in hits} <= set(served.tolist())
            if ix.manifest.serving:
                seen_snapshot += 1
                assert ntotal == n0
            elif ntotal > n0:
                seen_new += 1
            reads += 1
        finally:
            ix.close()
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert seen_snapshot >= 3, (seen_snapshot, reads)  # reads really overlapped the extension
    final = Index.open("c", root)
    assert final.faiss.ntotal == 36 and final.manifest.serving is None


def _digits_index(root, n, add=False):
    src = open_source("digits")
    src.records = src.records[:n]
    return build_index(src, BuildConfig.of(name="d", root=str(root), backbone="pixels:8", part_size=8, num_workers=0,
                                        add=add), progress=False)


def test_open_between_faiss_rename_and_manifest_publish_waits_for_the_writer(tmp_path, monkeypatch):
    """The writer renames the new FAISS file into place, then publishes the manifest naming it. A reader opening in
    between sees the old snapshot's manifest with the new file; it must wait for the manifest, not fail."""
    _digits_index(tmp_path, 30)
    real_save, opened = build.vindex.save_index, {}

    def open_in_the_window():
        try:
            ix = Index.open("d", tmp_path)
            opened["result"] = (ix.faiss.ntotal, ix.manifest.serving)
        except Exception as e:  # noqa: BLE001 — reported by the assertion below
            opened["result"] = e

    def save_then_pause(index, path):
        written = real_save(index, path)  # the new file is in place; the manifest still describes the snapshot
        t = threading.Thread(target=open_in_the_window)
        t.start()
        opened["thread"] = t
        time.sleep(0.5)  # the reader checks the files during this pause
        return written

    monkeypatch.setattr(build.vindex, "save_index", save_then_pause)
    _digits_index(tmp_path, 50, add=True)
    opened["thread"].join(timeout=30)
    assert opened["result"] == (50, None)  # it waited and opened the published index


@pytest.mark.parametrize("renamed", [False, True])
def test_an_add_killed_around_the_faiss_write_is_served_or_reported_then_resumed(tmp_path, monkeypatch, renamed):
    _digits_index(tmp_path, 30)
    real_save = build.vindex.save_index

    def die(index, path):
        if renamed:
            real_save(index, path)
        raise KeyboardInterrupt  # killed before the manifest naming a new FAISS file was published

    monkeypatch.setattr(build.vindex, "save_index", die)
    with pytest.raises(KeyboardInterrupt):
        _digits_index(tmp_path, 50, add=True)
    monkeypatch.setattr(reader, "_OPEN_WAIT_S", 0.3)
    if renamed:  # the snapshot's FAISS file is gone: reported after a short wait, not waited for forever
        t0 = time.monotonic()
        with pytest.raises(IndexStateError, match="does not match the manifest"):
            Index.open("d", tmp_path)
        assert time.monotonic() - t0 < 5
    else:  # all new parts committed, no new FAISS file: readers still get the complete snapshot
        ix = Index.open("d", tmp_path)
        assert ix.manifest.serving and ix.faiss.ntotal == 30 == len(ix.select()["id"])
        ix.close()
    monkeypatch.setattr(build.vindex, "save_index", real_save)
    assert _digits_index(tmp_path, 50, add=True)["embedded"] == 50  # the same command finishes it
    ix = Index.open("d", tmp_path)  # with the FAISS index of all 50, not the snapshot's 30
    assert ix.faiss.ntotal == 50 == ix.manifest.faiss.ntotal and not ix.manifest.serving
