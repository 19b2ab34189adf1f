"""The build engines behind one protocol: which one `engine_for` picks, where the model runs, and the in-process
`map` (the on-disk FAISS shard builds). The engines' embedding is tested end to end (test_build, test_ray)."""

import numpy as np
import pytest

from embedsearch.build.config import EngineConfig, RunConfig
from embedsearch.build.engines import Pins, devices, engine_for
from embedsearch.sources.base import Record


def test_engine_for_picks_by_kind_and_imported_vectors_win():
    run = RunConfig()
    assert engine_for(EngineConfig(), run).name == "local"
    assert engine_for(EngineConfig(kind="ray"), run).name == "ray"
    # imported vectors need no model, whatever engine was asked for
    assert engine_for(EngineConfig(kind="ray"), run, vectors={0: np.ones(3, np.float32)}).name == "external"


def test_devices_the_driver_keeps_its_copy_on_the_cpu_under_ray():
    assert devices(EngineConfig(), "cpu") == ("cpu", "cpu")
    assert devices(EngineConfig(kind="ray"), "cpu") == ("cpu", "cpu")
    assert devices(EngineConfig(kind="ray", gpus_per_actor=0.5), "auto") == ("cuda", "cpu")


@pytest.mark.parametrize("kind", ["local", "external"])
def test_map_runs_every_call_here_in_order(kind):
    engine = engine_for(EngineConfig(), RunConfig(), vectors={0: np.ones(2, np.float32)} if kind == "external"
                        else None)
    done = []
    engine.map(lambda a, b: a * b, [(2, 3), (4, 5)], lambda i, r: done.append((i, r)))
    assert done == [(0, 6), (1, 20)]


def test_ray_map_with_nothing_to_do_starts_no_cluster(monkeypatch):
    """Every shard already built (a resume): nothing is scheduled, so no cluster is started or joined."""
    from embedsearch.build.engines import ray

    monkeypatch.setattr(ray, "connect", lambda address: pytest.fail("connected to Ray"))
    engine_for(EngineConfig(kind="ray"), RunConfig()).map(pow, [], lambda i, r: pytest.fail("called"))


def test_external_engine_commits_each_part_with_its_imported_vectors():
    recs = [Record(id=i, path=f"{i}.png") for i in range(5)]
    vecs = {i: np.full(3, i, np.float32) for i in range(5)}
    got = []
    timings, info = engine_for(EngineConfig(), RunConfig(), Pins(), vectors=vecs).embed(
        None, [(0, recs[:3]), (1, recs[3:])], None, got.append)
    assert info == {"engine": "external"} and timings.images == 5
    assert [r.part for r in got] == [0, 1] and got[1].ids.tolist() == [3, 4]
    np.testing.assert_array_equal(got[1].vectors, [[3, 3, 3], [4, 4, 4]])
    assert all(row["status"] == "ok" for r in got for row in r.rows)
