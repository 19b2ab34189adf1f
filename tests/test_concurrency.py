"""Readers while a real `embedsearch index --add` process extends the index: they keep working on the last complete
snapshot and never see a part or FAISS file in progress."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from embedsearch.reader import Index
from embedsearch.search import search
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
            if ix.manifest.get("serving"):
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
    assert final.faiss.ntotal == 36 and final.manifest.get("serving") is None
