"""Supervised baselines (`pretrain --method supervised`): seeded, early-stopped on held-out train, resumable, and
indexed through `ckpt:` with penultimate features and no test-time augmentation."""

import numpy as np
import pytest
import torch

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.errors import EmbedsearchError
from embedsearch.models.backbones import create_backbone
from embedsearch.models.checkpoint import load_checkpoint
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source
from embedsearch.train import supervised as sv
from embedsearch.train.pretrain import select_records
from tests.conftest import kill_after_saves


@pytest.fixture(scope="module")
def small_digits():
    src = open_source("digits")
    src.records = src.records[:240]
    return src


def _cfg(**kw):
    return sv.SupervisedConfig(**{"arch": "cnn-small", "epochs": 3, "batch_size": 32, **kw})


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.mark.parametrize("arch", ["cnn-small", "cnn-bn", "cnn-deep", "vit"])
def test_seeded_runs_give_equal_checkpoints_and_the_index_gets_penultimate_features(tmp_path, small_digits, arch):
    kw = {"depth": 2, "width": 32, "heads": 2} if arch == "vit" else {}
    a = sv.train_supervised(small_digits, _cfg(arch=arch, epochs=2, **kw), tmp_path / "a", device="cpu",
                            progress=False)
    b = sv.train_supervised(small_digits, _cfg(arch=arch, epochs=2, **kw), tmp_path / "b", device="cpu",
                            progress=False)
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a.losses == b.losses and a.heldout_accuracy == b.heldout_accuracy
    model, meta = load_checkpoint(tmp_path / "a")
    assert meta["classes"] == sorted({r.label for r in small_digits.records if r.split == "train"})
    bb = create_backbone(f"ckpt:{tmp_path / 'a'}")
    want = {"cnn-small": 128, "cnn-bn": 128, "cnn-deep": 256, "vit": 32}[arch]
    img = small_digits.records[0].array
    from embedsearch.sources.images import array_to_image

    x = bb.preprocess(array_to_image(img)).unsqueeze(0)
    with torch.inference_mode():
        f1, f2 = bb.embed(x), bb.embed(bb.preprocess(array_to_image(img)).unsqueeze(0))
        assert f1.shape == (1, want) and torch.equal(f1, f2)  # deterministic: no test-time augmentation
        if arch != "vit":
            model.eval()
            assert torch.equal(f1, model.features(x))  # the classifier's input, not its logits


def test_heldout_comes_from_the_train_selection_only_and_test_is_never_seen(tmp_path, small_digits):
    res = sv.train_supervised(small_digits, _cfg(), tmp_path / "c", device="cpu", progress=False)
    train = select_records(small_digits, "split = 'train'")
    assert res.n_train + res.n_heldout == len([r for r in train if r.label is not None])
    assert res.n_heldout == pytest.approx(0.1 * len(train), abs=len({r.label for r in train}))
    _, meta = load_checkpoint(tmp_path / "c")
    assert meta["pretrain"]["where"] == "split = 'train'" and "held-out 10%" in meta["pretrain"]["heldout"]
    # the best held-out epoch is what is exported
    state = torch.load(tmp_path / "c.state.pt", weights_only=True)
    best = int(np.argmax(res.heldout_accuracy)) + 1
    assert res.best_epoch == best == state["history"]["best_epoch"]
    w = _weights(res.checkpoint)
    assert all(np.array_equal(w[k], state["history"]["best_weights"][k].numpy()) for k in w)


def test_early_stopping_ends_before_the_epoch_cap(tmp_path, small_digits):
    res = sv.train_supervised(small_digits, _cfg(epochs=40, patience=1, lr=3e-3), tmp_path / "e", device="cpu",
                              progress=False)
    assert res.epochs < 40 and res.epochs == res.best_epoch + 1


def test_a_killed_run_resumes_bit_identical(tmp_path, small_digits, monkeypatch):
    cfg = _cfg(epochs=4)
    ref = sv.train_supervised(small_digits, cfg, tmp_path / "ref", device="cpu", progress=False)
    restore = kill_after_saves(monkeypatch, sv)
    with pytest.raises(KeyboardInterrupt):
        sv.train_supervised(small_digits, cfg, tmp_path / "ck", device="cpu", progress=False)
    restore()
    res = sv.train_supervised(small_digits, cfg, tmp_path / "ck", resume=True, device="cpu", progress=False)
    assert res.losses == ref.losses and res.heldout_accuracy == ref.heldout_accuracy
    a, b = _weights(ref.checkpoint), _weights(res.checkpoint)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(EmbedsearchError, match="another configuration"):
        sv.train_supervised(small_digits, _cfg(epochs=5), tmp_path / "ck", resume=True, device="cpu", progress=False)


def test_supervised_checkpoint_indexes_and_evaluates(tmp_path, small_digits):
    sv.train_supervised(small_digits, _cfg(arch="cnn-bn", epochs=3), tmp_path / "m", device="cpu", progress=False)
    build_index(small_digits, BuildConfig.of(name="sup", root=str(tmp_path / "ix"), backbone=f"ckpt:{tmp_path / 'm'}",
                                          num_workers=0), progress=False)
    ix = Index.open("sup", tmp_path / "ix")
    assert ix.dim == 128 and "cnn-bn" in ix.manifest.backbone["model"]
    from embedsearch.evaluate import evaluate

    run = evaluate(ix, methods=["prototypes", "knn"])
    assert all(0 <= r.data["metrics"]["top1"] <= 1 for r in run.results)
    with pytest.raises(EmbedsearchError, match="unknown --arch"):
        sv.SupervisedConfig(arch="resnet9000")
