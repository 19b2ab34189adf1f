"""An index written before the grouped BuildConfig (commit 2f71d4c: a flat `build` record and a top-level
`backbone_config`) still opens, answers, verifies and reports its config — a frozen artifact, not one this test
writes with today's code."""

import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig
from embedsearch.cli import cli
from embedsearch.models.config import BackboneConfig
from embedsearch.reader import Index

FROZEN = Path(__file__).parent / "data" / "frozen" / "index-2f71d4c.tar.gz"


@pytest.fixture
def old(tmp_path, monkeypatch):
    with tarfile.open(FROZEN) as t:
        t.extractall(tmp_path, filter="data")
    monkeypatch.setenv("EMBEDSEARCH_HOME", str(tmp_path))
    return tmp_path / "old-flat"


def test_an_index_from_before_the_groups_opens_searches_and_verifies(old):
    m = json.loads((old / "manifest.json").read_text())
    assert isinstance(m["build"]["backbone"], str) and "backbone_config" in m  # the old layout, as written
    ix = Index.open("old-flat")
    assert ix.backbone_config == BackboneConfig.from_dict(m["backbone_config"])
    cfg = BuildConfig.from_dict(ix.manifest.build)
    assert cfg.backbone.spec == "pixels:4" and cfg.faiss.factory == "Flat" and cfg.run.part_size == 2048
    first = ix.select()["id"][0]
    r = CliRunner().invoke(cli, ["search", "old-flat", "--id", str(first), "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 3
    v = CliRunner().invoke(cli, ["verify", "old-flat"])
    assert v.exit_code == 0, v.output
    # a query image is embedded with the recorded config (pixels at 4×4): it lands among the red items
    from PIL import Image

    Image.new("RGB", (12, 12), (220, 30, 30)).save(old.parent / "q.png")
    q = CliRunner().invoke(cli, ["search", "old-flat", "--image", str(old.parent / "q.png"), "-k", "3", "--json"])
    assert q.exit_code == 0, q.output
    assert {h["label"] for h in json.loads(q.output)} == {"red"}
