"""Disk full / I/O errors while writing a part, the FAISS file or the catalog: one line naming the file, exit 1,
committed data intact, and the same command afterwards finishes the index exactly as an undisturbed run would.

The error is real: the indexing process runs with RLIMIT_FSIZE and SIGXFSZ ignored, so the kernel refuses writes past
the limit with EFBIG ("File too large"), the way a full disk refuses them with ENOSPC.
"""

import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from embedsearch.build.repair import verify
from embedsearch.reader import Index
from embedsearch.store import parts as store

ARGS = ["index", "digits", "-b", "pixels:16", "--dtype", "float32", "--part-size", "1000", "--workers", "0"]


def _index(root, name, limit=None):
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "EMBEDSEARCH_HOME": str(root)}
    return subprocess.run([sys.executable, "-m", "embedsearch", "-q", *ARGS, "-n", name], env=env, text=True,
                          capture_output=True, timeout=300, preexec_fn=limited if limit else None)


def _state(root, name):
    ix = Index.open(name, root)
    ids, v = store.read_all(ix.part_paths)
    o = np.argsort(ids)
    _, hits = ix.faiss.search(v[o][:5], 5)
    return ids[o], v[o], hits


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    r = _index(root, "ref")
    assert r.returncode == 0, r.stderr
    d = root / "ref"
    sizes = {"parts": [p.stat().st_size for p in sorted((d / "parts").glob("*.parquet"))],
             "catalog": (d / "catalog.duckdb").stat().st_size, "faiss": (d / "index.faiss").stat().st_size}
    return _state(root, "ref"), sizes


@pytest.mark.slow
@pytest.mark.parametrize("target", ["faiss", "part", "catalog"])
def test_write_failure_names_the_file_and_resume_completes(tmp_path, reference, target):
    (ref_ids, ref_v, ref_hits), size = reference
    if target == "faiss":  # parts and catalog fit under the limit, the FAISS file does not
        limit = (max(*size["parts"], size["catalog"]) + size["faiss"]) // 2
        assert max(*size["parts"], size["catalog"]) < limit < size["faiss"]
        names = "index.faiss"
    elif target == "part":  # the first part does not fit; the catalog does
        limit = size["parts"][0] - 100_000
        assert size["catalog"] < limit
        names = "part-00000.parquet"
    else:  # the catalog's write-ahead log cannot grow past 100 kB: the first catalog transaction fails
        limit = 100_000
        names = "catalog"
    r = _index(tmp_path, "x", limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: cannot write") and names in lines[0] and "File too large" in lines[0]
    d = tmp_path / "x"
    assert not [f for f in d.rglob("*") if ".tmp-" in f.name]
    if target == "faiss":  # every part committed before the failure is listed and checks out
        rep = verify("x", root=tmp_path)
        assert not rep.sound and {p["problem"] for p in rep.problems} == {"incomplete", "faiss"}  # the build did not finish; no FAISS file
        assert rep.checked["parts"].startswith("2 of 2 sound")
    r = _index(tmp_path, "x")
    assert r.returncode == 0, r.stderr
    ids, v, hits = _state(tmp_path, "x")
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(hits, ref_hits)
    assert verify("x", root=tmp_path).sound
