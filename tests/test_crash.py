"""Real processes killed mid-run (SIGKILL, SIGTERM, SIGINT), then resumed: the result equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from embedsearch.query.search import search
from embedsearch.reader import Index
from embedsearch.store import parts as store

ARGS = ["-b", "timm:vit_small_patch14_dinov2", "--random-init", "--image-size", "112", "--precision", "fp32",
        "--part-size", "4", "--batch-size", "4", "--workers", "0", "-n", "k"]


def _run(root, image_folder, crash_at=None):
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1"}
    if crash_at:
        env["EMBEDSEARCH_CRASH_AT"] = crash_at  # store.crash_point: SIGKILL at exactly that write or rename
    # a shell running pytest in the background hands its children SIGINT ignored, and Python then keeps it ignored:
    # restore the default so the SIGINT test tests embedsearch, not how pytest was started
    return subprocess.Popen([sys.executable, "-m", "embedsearch", "-q", "index", str(image_folder), *ARGS],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _state(root):
    ix = Index.open("k", root)
    ids, v = store.read_all(ix.part_paths)
    o = np.argsort(ids)
    return ids[o], v[o], [r["id"] for r in search(ix, ids=ids[o][:3].tolist(), k=5)]


def _resume_and_compare(root, image_folder, reference):
    """Re-run the same command: it must finish an index equal to the uninterrupted one, with no temporary file."""
    p = _run(root, image_folder)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    ids, v, hits = _state(root)
    np.testing.assert_array_equal(ids, reference[0])
    np.testing.assert_array_equal(v, reference[1])
    assert hits == reference[2]
    assert not [f for f in (root / "k").rglob("*") if ".tmp-" in f.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder_module):
    root = tmp_path_factory.mktemp("ref")
    p = _run(root, image_folder_module)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    return _state(root)


@pytest.fixture(scope="module")
def image_folder_module(tmp_path_factory):
    from tests.conftest import COLORS, make_image

    root = tmp_path_factory.mktemp("imgs")
    k = 0
    for cls, color in COLORS.items():
        for i in range(10):
            make_image(root / cls / f"{cls}_{i}.png", color, seed=k)
            k += 1
    return root


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_killed_run_resumes_to_the_same_index(tmp_path, image_folder_module, reference, sig, code):
    p = _run(tmp_path, image_folder_module)
    parts = tmp_path / "k" / "parts"
    deadline = time.time() + 120
    while not (parts / "part-00001.parquet").exists():  # wait until a couple of parts are committed
        assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.05)
    p.send_signal(sig)
    assert p.wait(timeout=60) == code
    if sig != signal.SIGKILL:
        assert "re-run the same command to resume" in p.stderr.read()
    done_before = len(list(parts.glob("part-*.parquet")))
    assert 2 <= done_before < 8  # 30 images / 4 per part = 8 parts: it really stopped midway
    _resume_and_compare(tmp_path, image_folder_module, reference)


@pytest.mark.slow
@pytest.mark.parametrize("point", [
    "mid-write:index.faiss",  # the FAISS file half written (under its temporary name)
    "before-rename:index.faiss",  # written and fsynced, not yet renamed into place
    "after-rename:index.faiss",  # in place, the manifest not yet updated to name it
    "before-rename:part-00002.parquet",
    "after-rename:part-00002.parquet",  # the part in place, the manifest not listing it yet
    "before-commit:catalog#4",  # a catalog transaction (part 1's item statuses) not yet committed
    "after-commit:catalog#4",
    "after-rename:manifest.json#3",
])
def test_kill_at_each_write_and_rename_point_then_resume(tmp_path, image_folder_module, reference, point):
    p = _run(tmp_path, image_folder_module, crash_at=point)
    assert p.wait(timeout=300) == -9, p.stderr.read()  # it really died at that point
    _resume_and_compare(tmp_path, image_folder_module, reference)
