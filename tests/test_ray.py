"""`index --engine ray` on a real local Ray cluster: the same bytes as the local engine, resume across engines,
dead workers retried or named, and each preflight refusal."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.slow

MODEL = ["-b", "timm:test_vit", "--random-init", "--precision", "fp32", "--part-size", "4", "--workers", "0",
         "--threads", "1"]
NEURAL = [*MODEL, "--batch-size", "4"]
PIXELS = ["-b", "pixels:8", "--part-size", "300"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real Ray head on loopback with 2 CPUs, started the way a user starts one; yields its address."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                    "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _index(root, source, *args, engine="local", address=None, env=None, check=True, name="k"):
    e = {**os.environ, "EMBEDSEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
         **(env or {})}
    cmd = [sys.executable, "-m", "embedsearch", "-q", "index", str(source), *args, "-n", name, "--json",
           "--engine", engine]
    if engine == "ray":
        cmd += ["--cpus-per-actor", "1"] + (["--address", address] if address else [])
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _files(root, name="k") -> dict:
    """sha256 of every part and of the FAISS file."""
    import hashlib

    d = Path(root) / name
    return {f.relative_to(d).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in [*sorted((d / "parts").glob("part-*.parquet")), d / "index.faiss"] if f.exists()}


def _rows(root, name="k"):
    from embedsearch.reader import Index

    return Index.open(name, root).con.execute(
        "SELECT id, path, label, split, part, status, stage, error_type, width, height FROM items ORDER BY id"
    ).fetchall()


def _hits(root, name="k"):
    from embedsearch.query.search import search
    from embedsearch.reader import Index

    ix = Index.open(name, root)
    ids = [r[0] for r in ix.con.execute("SELECT id FROM items WHERE status = 'ok' ORDER BY id LIMIT 3").fetchall()]
    return [(h["query"], h["id"], round(h["score"], 6)) for h in search(ix, ids=ids, k=5)]


def _same(a, b, name="k"):
    assert _files(a, name) == _files(b, name)
    assert _rows(a, name) == _rows(b, name)
    assert _hits(a, name) == _hits(b, name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import COLORS, make_image

    root = tmp_path_factory.mktemp("img") / "images"
    k = 0
    for split, n in (("train", 8), ("test", 3)):
        for cls, color in COLORS.items():
            for i in range(n):
                make_image(root / split / cls / f"{cls}_{i}.{'png' if i % 2 else 'jpg'}", color,
                           size=(32 + 4 * i, 28 + 2 * i), seed=k)
                k += 1
    return root


@pytest.fixture(scope="module")
def neural_ref(tmp_path_factory, folder):
    root = tmp_path_factory.mktemp("ref")
    _index(root, folder, *NEURAL)
    return root


def test_pixels_private_cluster_equals_local_flat_and_ivf(tmp_path):
    """The default --engine ray starts its own local cluster; parts, FAISS file (Flat, and an IVF with 4 lists),
    catalog and search equal the local engine's, and --json stays valid."""
    for factory in ("Flat", "IVF4,Flat"):
        a, b = tmp_path / f"local-{factory}", tmp_path / f"ray-{factory}"
        _index(a, "digits", *PIXELS, "--index", factory)
        p = _index(b, "digits", *PIXELS, "--index", factory, engine="ray")
        summary = json.loads(p.stdout)
        assert summary["engine"] == "ray" and summary["actors"] == 2 and summary["parts_embedded"] == 6
        _same(a, b)


def test_neural_backbone_equal_and_out_of_order(cluster, tmp_path, folder, neural_ref):
    """A random-init ViT with threads pinned: identical bytes; part 0 delayed so it is committed after later ones."""
    p = _index(tmp_path, folder, *NEURAL, engine="ray", address=cluster,
               env={"EMBEDSEARCH_TEST_RAY_DELAY": "0:4"})
    assert json.loads(p.stdout)["threads"] == 1
    parts = sorted((tmp_path / "k" / "parts").glob("part-*.parquet"))
    assert len(parts) == 9
    mtime = [f.stat().st_mtime_ns for f in parts]
    assert mtime[0] > max(mtime[1], mtime[3])  # committed after parts planned behind it
    _same(neural_ref, tmp_path)


def test_worker_killed_once_is_retried(cluster, tmp_path, folder, neural_ref):
    marker = tmp_path / "died-once"
    p = _index(tmp_path, folder, *NEURAL, engine="ray", address=cluster,
               env={"EMBEDSEARCH_TEST_RAY_DIE": f"3@{marker}"})
    summary = json.loads(p.stdout)
    # the dead actor's other queued part is re-run too (it cannot tell which of its parts killed it)
    assert marker.exists() and summary["actors_replaced"] == 1 and 1 <= summary["retried_parts"] <= 2
    _same(neural_ref, tmp_path)


def test_worker_killed_every_time_names_the_part_then_resumes(cluster, tmp_path, folder, neural_ref):
    p = _index(tmp_path, folder, *NEURAL, engine="ray", address=cluster, env={"EMBEDSEARCH_TEST_RAY_DIE": "3"},
               check=False)
    assert p.returncode == 1
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "part 3 failed on 3 attempts" in err[0] and "worker died" in err[0], p.stderr[-2000:]
    done = {f.name for f in (tmp_path / "k" / "parts").glob("part-*.parquet")}
    assert done == {f"part-{i:05d}.parquet" for i in range(9) if i != 3}  # every other part committed
    _index(tmp_path, folder, *NEURAL, engine="ray", address=cluster)  # the same command, the worker healthy
    _same(neural_ref, tmp_path)


def test_driver_killed_then_resumed_with_either_engine(cluster, tmp_path, folder, neural_ref):
    """kill -9 of the driver after its third committed part; one copy resumes locally, one on Ray."""
    p = _index(tmp_path / "a", folder, *NEURAL, engine="ray", address=cluster, check=False,
               env={"EMBEDSEARCH_CRASH_AT": "after-rename:manifest.json#4"})
    assert p.returncode == -9
    assert 0 < len(list((tmp_path / "a" / "k" / "parts").glob("part-*.parquet"))) < 9
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _index(tmp_path / "a", folder, *NEURAL)
    _index(tmp_path / "b", folder, *NEURAL, engine="ray", address=cluster)
    _same(neural_ref, tmp_path / "a")
    _same(neural_ref, tmp_path / "b")


def test_grow_with_the_other_engine_and_repair_on_ray(cluster, tmp_path, folder, neural_ref):
    """Started locally on the train split, grown on Ray with --add: equal to growing it locally; a damaged part
    repaired by `verify --repair --engine ray` comes back byte-identical."""
    import hashlib

    src, ref = tmp_path / "src", tmp_path / "ref"
    shutil.copytree(folder / "train", src / "train")
    _index(tmp_path, src, *NEURAL)
    _index(ref, src, *NEURAL)
    shutil.copytree(folder / "test", src / "test")
    _index(tmp_path, src, *NEURAL, "--add", engine="ray", address=cluster)
    _index(ref, src, *NEURAL, "--add")
    _same(ref, tmp_path)

    part = tmp_path / "k" / "parts" / "part-00002.parquet"
    before = hashlib.sha256(part.read_bytes()).hexdigest()
    part.write_bytes(part.read_bytes()[:-40])
    env = {**os.environ, "EMBEDSEARCH_HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "embedsearch", "-q", "verify", "k", "--repair", "--engine", "ray",
                        "--address", cluster, "--cpus-per-actor", "1"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert hashlib.sha256(part.read_bytes()).hexdigest() == before
    _same(ref, tmp_path)


def test_preflight_refusals(cluster, tmp_path, folder):
    """Each thing the driver pins is checked on the actor, and a refusal is one line naming the node."""
    from embedsearch.build.engines.ray import Embedder, connect
    from embedsearch.core.errors import EmbedsearchError
    from embedsearch.core.versions import library_versions
    from embedsearch.models.backbones import create_backbone

    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        assert connect(cluster)
        bb = create_backbone("pixels:8")
        good = {"precision": "fp32", "batch_size": 4, "threads": 1, "device": "cpu", "num_workers": 0,
                "channels_last": False, "versions": library_versions(), "root": str(folder),
                "sample": "train/red/red_0.jpg"}
        actor = ray.remote(num_cpus=1)(Embedder)
        assert ray.get(actor.remote(bb, good, {}).preflight.remote())["problems"] == []
        cases = {
            "versions": ({**good["versions"], "torch": "0.0.1"}, "torch 2"),
            "precision": ("auto", "precision auto"),
            "device": ("cuda", "CUDA"),
            "root": (str(tmp_path / "not-mounted"), "is not readable"),
            "sample": ("train/red/missing.jpg", "missing.jpg is not readable"),
        }
        for key, (value, phrase) in cases.items():
            rep = ray.get(actor.remote(bb, {**good, key: value}, {}).preflight.remote())
            assert len(rep["problems"]) == 1 and phrase in rep["problems"][0], (key, rep)
            assert socket.gethostname() in rep["node"]
    finally:
        ray.shutdown()
        os.environ.pop("RAY_AUTH_MODE", None)

    # through the CLI: a dataset root the workers cannot read (listed, then unmounted), and GPUs the cluster lacks
    from embedsearch.build import BuildConfig, build_index
    from embedsearch.sources.datasets import open_source

    moved = tmp_path / "images"
    shutil.copytree(folder, moved)
    src = open_source(str(moved))
    shutil.rmtree(moved)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        with pytest.raises(EmbedsearchError, match=r"Ray node .+ cannot embed this index: the dataset root .*images "
                                                   r"is not readable"):
            build_index(src, BuildConfig.of(name="gone", root=str(tmp_path / "ix"), engine="ray",
                                         ray_address=cluster), progress=False)
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
    p = _index(tmp_path / "g", folder, *NEURAL, "--gpus-per-actor", "1", engine="ray", address=cluster, check=False)
    assert p.returncode == 1 and "--gpus-per-actor 1: the Ray cluster has 0 GPUs" in p.stderr, p.stderr[-1000:]


def test_batch_size_is_part_of_the_space(tmp_path, folder):
    """Batching changes a network's float results: a resume or --add with another batch size is refused, and
    without --batch-size it keeps the recorded one."""
    src = tmp_path / "src"
    shutil.copytree(folder / "train", src / "train")
    _index(tmp_path, src, *NEURAL)
    shutil.copytree(folder / "test", src / "test")
    p = _index(tmp_path, src, *MODEL, "--batch-size", "8", "--add", check=False)
    assert p.returncode == 1 and "was built with batch_size=4, this run has batch_size=8" in p.stderr
    p = _index(tmp_path, src, *MODEL, "--add")
    assert json.loads(p.stdout)["batch_size"] == 4


def test_webdataset_shards_on_ray_equal_local(cluster, tmp_path):
    """Shards listed by the driver, members read by the actors with the recorded offsets: the same index."""
    from tests.test_webdataset import write_shards

    d = write_shards(tmp_path / "shards")
    spec = str(d / "{00000..00002}.tar")
    _index(tmp_path / "a", spec, *NEURAL)
    p = _index(tmp_path / "b", spec, *NEURAL, engine="ray", address=cluster)
    assert json.loads(p.stdout)["failed"] == 1  # the member that is not an image, on both
    _same(tmp_path / "a", tmp_path / "b")


def test_on_disk_ivf_shards_as_ray_tasks_equal_the_local_build(tmp_path, cluster):
    """One Ray task per shard (each reads its parts and writes its shard under the index folder), merged by the
    driver: the same index.faiss and lists file as shards built in-process."""
    args = ["--part-size", "150", "--index", "IVF16,Flat", "--on-disk", "--max-memory", "1MB", "-b", "pixels:8"]
    local, ray_root = tmp_path / "local", tmp_path / "ray"
    _index(local, "digits", *args)
    _index(ray_root, "digits", *args, engine="ray", address=cluster)
    _same(local, ray_root)
    lists = [f.name for f in (ray_root / "k").glob("lists.*.ivfdata")]
    assert lists == ["lists.0001.ivfdata"]
    assert (local / "k" / lists[0]).read_bytes() == (ray_root / "k" / lists[0]).read_bytes()
    st = json.loads((ray_root / "k" / "manifest.json").read_text())["faiss"]["storage"]
    assert (st["shard_engine"], st["shards_built"], st["shards"]) == ("ray", 6, 6)
