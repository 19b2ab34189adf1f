import json

import pytest
import torch

from embedsearch.core.errors import EmbedsearchError
from embedsearch.models.backbones import create_backbone
from embedsearch.models.checkpoint import load_checkpoint
from embedsearch.sources.datasets import open_source
from embedsearch.train import pretrain as pt
from tests.conftest import kill_after_saves


@pytest.fixture(scope="module")
def small_digits():
    src = open_source("digits")
    src.records = src.records[:160]
    return src


def _cfg(method, **kw):
    base = dict(method=method, epochs=6, batch_size=32, warmup_epochs=1, lr=2e-3, depth=2, width=32, heads=2,
                decoder_depth=1, decoder_width=32)
    return pt.PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["mae", "infonce", "mae+infonce"])
def test_a_few_epochs_lower_the_loss(tmp_path, small_digits, method):
    res = pt.pretrain(small_digits, _cfg(method), tmp_path / "ck", device="cpu", progress=False)
    assert len(res.losses) == 6 and res.losses[-1] < res.losses[0], res.losses
    n_train = sum(r.split == "train" for r in small_digits.records)
    assert res.n_images == n_train  # --where "split = 'train'": test images never reach pretraining
    assert (tmp_path / "ck.loss.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_round_trip_gives_identical_embeddings(tmp_path, small_digits):
    pt.pretrain(small_digits, _cfg("mae", epochs=2), tmp_path / "ck", device="cpu", progress=False)
    vit, meta = load_checkpoint(tmp_path / "ck")
    bb = create_backbone(f"ckpt:{tmp_path / 'ck'}")
    assert bb.dim == 32 and bb.info["preprocess"] == meta["preprocess"] and bb.info["pretrain"]["method"] == "mae"
    from embedsearch.sources.images import array_to_image

    x = torch.stack([bb.preprocess(array_to_image(r.array)) for r in small_digits.records[:8]])
    vit.eval()
    with torch.inference_mode():
        assert torch.equal(bb.embed(x), vit.forward_features(x)[:, 0])
    with pytest.raises(EmbedsearchError, match="trained at 8 px"):
        create_backbone(f"ckpt:{tmp_path / 'ck'}", image_size=16)


def test_resume_continues_from_the_saved_epoch(tmp_path, small_digits, monkeypatch):
    cfg = _cfg("infonce", epochs=4)
    real_save, calls = pt._save, {"n": 0}

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pt, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(small_digits, cfg, tmp_path / "ck", device="cpu", progress=False)
    monkeypatch.setattr(pt, "_save", real_save)
    saved = json.loads((tmp_path / "ck.json").read_text())
    assert saved["epochs_done"] == 2
    res = pt.pretrain(small_digits, cfg, tmp_path / "ck", resume=True, device="cpu", progress=False)
    assert len(res.losses) == 4 and res.losses[:2] == saved["losses"]
    assert json.loads((tmp_path / "ck.json").read_text())["epochs_done"] == 4
    with pytest.raises(EmbedsearchError, match="another configuration"):
        pt.pretrain(small_digits, _cfg("infonce", epochs=5), tmp_path / "ck", resume=True, device="cpu", progress=False)


def test_where_selection_and_bad_method(small_digits):
    recs = pt.select_records(small_digits, "split = 'test' AND label = '3'")
    assert recs and all(r.split == "test" and r.label == "3" for r in recs)
    with pytest.raises(EmbedsearchError, match="selects no items"):
        pt.select_records(small_digits, "label = 'x'")
    with pytest.raises(EmbedsearchError, match="unknown --method"):
        pt.pretrain(small_digits, pt.PretrainConfig(method="byol"), "/tmp/never", progress=False)


@pytest.mark.parametrize("method", ["mae+infonce"])
@pytest.mark.parametrize("die_in", ["_save", "_export"])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, small_digits, monkeypatch, method, die_in):
    """Killed after epoch 2 — after the whole save (`_save`), or after the state's commit but before the encoder
    was exported (`_export`) — and resumed: the same weights, bit for bit, and the same loss history. Before, the
    RNGs were re-seeded on resume (another run), and a kill between the files paired new weights with old state."""
    from safetensors.numpy import load_file

    cfg = _cfg(method, epochs=4)
    ref = pt.pretrain(small_digits, cfg, tmp_path / "ref", device="cpu", progress=False)
    real, calls = getattr(pt, die_in), {"n": 0}

    def then_die(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3 and die_in == "_export":  # epoch 3: its state is committed, its export never runs
            raise KeyboardInterrupt
        real(*a, **kw)
        if calls["n"] == 2 and die_in == "_save":
            raise KeyboardInterrupt

    monkeypatch.setattr(pt, die_in, then_die)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(small_digits, cfg, tmp_path / "ck", device="cpu", progress=False)
    monkeypatch.setattr(pt, die_in, real)
    res = pt.pretrain(small_digits, cfg, tmp_path / "ck", resume=True, device="cpu", progress=False)
    assert res.losses == ref.losses
    a, b = load_file(str(tmp_path / "ref.safetensors")), load_file(str(tmp_path / "ck.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_video_mae_loss_is_l1_on_masked_tubelets_only(small_digits):
    """The gradient of the loss with respect to the reconstruction targets is zero at every unmasked token and
    ±1/(count) (L1) at the masked ones: the visible tubelets never enter the loss as targets."""
    from embedsearch.models.video_vit import tubelets

    cfg = _cfg("video-mae", frames=3, tubelet=1).resolved(8)
    torch.manual_seed(0)
    model = pt.make_vit(cfg)
    dec = pt._build_mae_parts(cfg, model)
    x = torch.rand(4, 3, 8, 8)
    target = tubelets(model.video(x), cfg.tubelet, cfg.patch_size).clone().requires_grad_()
    loss, mask = pt.video_mae_loss(model, dec, x, cfg, torch.Generator().manual_seed(1), target=target,
                                   return_mask=True)
    loss.backward()
    g = target.grad.abs().sum(-1)
    assert model.n_tokens == 3 * 16 and mask.shape == (4, 48) and 0 < mask.mean() < 1
    assert torch.all(g[mask == 0] == 0) and torch.all(g[mask == 1] > 0)
    per_value = 1.0 / (mask.sum() * target.shape[-1])  # d|p − t| / dt = ±1, averaged over the hidden values
    assert torch.allclose(target.grad.abs()[mask == 1], per_value.expand_as(target.grad[mask == 1]), rtol=1e-5)
    # the same loss without a given target uses the frames' own tubelets
    again = pt.video_mae_loss(model, dec, x, cfg, torch.Generator().manual_seed(1))
    assert torch.allclose(again, loss.detach())


def test_video_mae_trains_resumes_and_indexes_through_ckpt(tmp_path, small_digits, monkeypatch):
    from safetensors.numpy import load_file

    from embedsearch.build import BuildConfig, build_index
    from embedsearch.reader import Index

    cfg = _cfg("video-mae", epochs=3, frames=3, tubelet=3)
    ref = pt.pretrain(small_digits, cfg, tmp_path / "ref", device="cpu", progress=False)
    assert ref.losses[-1] < ref.losses[0]
    restore = kill_after_saves(monkeypatch, pt)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(small_digits, cfg, tmp_path / "ck", device="cpu", progress=False)
    restore()
    res = pt.pretrain(small_digits, cfg, tmp_path / "ck", resume=True, device="cpu", progress=False)
    assert res.losses == ref.losses
    a, b = load_file(str(tmp_path / "ref.safetensors")), load_file(str(tmp_path / "ck.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    model, meta = load_checkpoint(tmp_path / "ref")
    assert meta["video"]["frames"] == 3 and model.n_tokens == 16  # tubelet 3: one token per 3-frame cube
    build_index(small_digits, BuildConfig.of(name="v", root=str(tmp_path / "ix"), backbone=f"ckpt:{tmp_path / 'ref'}",
                                          num_workers=0), progress=False)
    ix = Index.open("v", tmp_path / "ix")
    assert ix.dim == 32 and "video ViT" in ix.manifest.backbone["model"]
    with pytest.raises(EmbedsearchError, match="--tubelet 2 must divide --frames 3"):
        _cfg("video-mae", frames=3, tubelet=2)
