"""Checkpoints people actually published (tests/data/real/, see its README), loaded through the CLI as a user would:
`py:` with the architecture written in our own words, `--weights` the file byte for byte as its repository holds it.
The stored vectors must equal the penultimate features recorded with each repository's own model code on the same
real images (≤ 1e-4 relative), and the model's own logits must pick the recorded classes."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.models.checkpoint import apply_state_dict, load_state_dict
from embedsearch.reader import Index

REAL = Path(__file__).parent / "data" / "real"
CORPUS = json.loads((REAL / "MANIFEST.json").read_text())["artifacts"]


def _artifact(name):
    return next(a for a in CORPUS if a["name"] == name)


@pytest.mark.parametrize("art", CORPUS, ids=[a["name"] for a in CORPUS])
def test_each_published_checkpoint_loads_and_matches_its_repository_s_forward(art, tmp_path, index_root):
    weights = REAL / art["file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == art["sha256"]  # the file as published
    folder = tmp_path / "images"
    folder.mkdir()
    for im in art["images"]:
        shutil.copy(REAL / im, folder / Path(im).name)
    _, _, rest = art["embedsearch"]["backbone"].partition(":")
    model_file, _, factory = rest.rpartition(":")
    spec = f"py:{Path(__file__).parent.parent / model_file}:{factory}"
    r = CliRunner().invoke(cli, ["index", str(folder), "-b", spec, "--weights", str(weights), "-n", "real",
                                 "--workers", "0", *art["embedsearch"]["flags"].split()])
    assert r.exit_code == 0, r.output
    ix = Index.open("real")
    sel = ix.select()
    paths = ix.items_by_id(list(sel["id"]), "id, path")
    by_name = {Path(paths[int(i)]["path"]).name: int(i) for i in sel["id"]}
    order = json.loads((REAL / art["reference"]["record"]).read_text())["images"]
    got = ix.vectors(np.array([by_name[n] for n in order]))
    want = np.load(REAL / art["reference"]["features"])
    assert got.shape == want.shape
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= 1e-4, rel


def test_the_2018_resnet_without_batchnorm_counters_loads_as_torch_loads_it():
    """The issue's refusal: `55 missing keys (bn1.num_batches_tracked, …)` for a checkpoint torch itself loads."""
    import importlib.util

    art = _artifact("akamaster_resnet56")
    sd = load_state_dict(REAL / art["file"])
    assert sd.container == "state_dict" and not any(k.endswith("num_batches_tracked") for k in sd)
    spec = importlib.util.spec_from_file_location("akamaster_resnet", REAL / "models" / "akamaster_resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ours, torchs = mod.resnet56().eval(), mod.resnet56().eval()
    apply_state_dict(ours, sd, "resnet56")
    torchs.load_state_dict(dict(sd), strict=False)  # what the repository's own load amounts to in torch today
    for (k, a), (_, b) in zip(sorted(ours.state_dict().items()), sorted(torchs.state_dict().items())):
        assert torch.equal(a, b), k


def test_a_checkpoint_that_does_not_fit_names_the_container_and_keys(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinyvgg", REAL / "models" / "mrdbourke_tinyvgg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from embedsearch.core.errors import BackboneError

    sd = load_state_dict(REAL / _artifact("mlbook_lightning_mlp_mnist")["file"])
    with pytest.raises(BackboneError) as e:
        apply_state_dict(mod.build(), sd, "epoch=17.ckpt")
    msg = str(e.value)
    assert "'state_dict' entry" in msg and "missing keys" in msg and "unexpected keys" in msg and "\n" not in msg


def test_a_2017_whole_pickled_model_is_refused_in_one_line_that_says_how_to_re_save_it(tmp_path, index_root):
    """yunjey/pytorch-tutorial (2017) saved `torch.save(model, 'model.pkl')`: the module object in the pre-0.4
    format. Reading it means unpickling `__main__.LogisticRegression`, i.e. running pickled code, which
    weights_only loading never does; the refusal must say it is a whole model and how to get its state dict (the
    hint for training dicts, `ckpt['state_dict']`, does not apply)."""
    art = next(a for a in json.loads((REAL / "MANIFEST.json").read_text())["refused_artifacts"]
               if a["name"] == "yunjey_logreg_2017")
    weights = REAL / art["file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == art["sha256"]
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("mnist_00_7.png", "mnist_01_2.png"):
        shutil.copy(REAL / "images" / name, folder / name)
    spec = f"py:{REAL / 'models' / 'yunjey_logreg.py'}:build"
    r = CliRunner().invoke(cli, ["index", str(folder), "-b", spec, "--weights", str(weights), "-n", "real",
                                 "--workers", "0", "--image-size", "28", "--mean", "0,0,0", "--std", "1,1,1",
                                 "--dtype", "float32", "--precision", "fp32"])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert "whole pickled model (__main__.LogisticRegression)" in lines[0]
    assert ".state_dict()" in lines[0] and "ckpt['state_dict']" not in lines[0]
