import pickle

import pytest
import torch
from PIL import Image

from embedsearch.core.errors import BackboneError, SpecError
from embedsearch.models.backbones import create_backbone
from embedsearch.models.checkpoint import load_state_dict


def _batch(bb, n=3):
    imgs = [Image.new("RGB", (40 + 7 * i, 30), (50 * i, 100, 200)) for i in range(n)]
    return torch.stack([bb.preprocess(im) for im in imgs])


def test_timm_vit_pools():
    dims = {p: create_backbone("timm:test_vit", pretrained=False, pool=p).dim for p in ("default", "cls", "avg")}
    assert dims == {"default": 64, "cls": 64, "avg": 64}
    tok = create_backbone("timm:test_vit", pretrained=False, pool="tokens")
    assert tok.dim % 64 == 0 and tok.dim > 64


def test_timm_cnn_and_preprocess_from_data_config():
    bb = create_backbone("timm:test_resnet", pretrained=False, image_size=96)
    assert bb.info["preprocess"]["input_size"] == [3, 96, 96]
    assert bb.embed(_batch(bb)).shape == (3, bb.dim)
    with pytest.raises(SpecError, match="no token map"):
        create_backbone("timm:test_resnet", pretrained=False, pool="cls")


def test_unknown_timm_model_hints():
    with pytest.raises(SpecError, match="did you mean"):
        create_backbone("timm:vit_smal_patch14", pretrained=False)


def test_offline_pretrained_is_one_clear_line():
    with pytest.raises(BackboneError) as e:
        create_backbone("timm:test_vit.r160_in1k")
    msg = str(e.value)
    assert "timm:test_vit.r160_in1k" in msg and "--weights FILE" in msg and "\n" not in msg


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """The Hub client as on a machine without network: online mode, a host that refuses connections, an empty
    cache. Without the probe, huggingface_hub would retry each file for ~50 s before giving up."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    return tmp_path / "hub"


def test_unreachable_hub_fails_fast_with_one_line(unreachable_hub):
    from huggingface_hub import constants

    with pytest.raises(BackboneError) as e:  # at once, instead of after the client's retries
        create_backbone("timm:test_vit.r160_in1k")
    msg = str(e.value)
    assert "timm:test_vit.r160_in1k" in msg and "does not answer" in msg and str(unreachable_hub) in msg
    assert "\n" not in msg
    assert constants.HF_HUB_OFFLINE is False  # offline mode was switched on for that load only


def test_pretrained_weights_load_from_the_hub_cache_when_the_hub_is_unreachable(unreachable_hub):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    ref = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = unreachable_hub / "models--timm--test_vit.r160_in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(repo / "snapshots" / commit /
                                                                            "model.safetensors"))
    bb = create_backbone("timm:test_vit.r160_in1k", seed=999)  # the seed would give other random weights
    x = _batch(bb)
    with torch.inference_mode():
        assert torch.equal(bb.embed(x), ref(x))
    assert bb.info["weights"] == "pretrained"


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_round_trip_gives_identical_embeddings(tmp_path, fmt):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    ref = timm.create_model("test_vit", pretrained=False, num_classes=10).eval()  # with a head: it must be ignored
    path = tmp_path / f"w.{fmt}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save({"state_dict": sd}, path)
    bb = create_backbone("timm:test_vit", weights=str(path), seed=999)
    x = _batch(bb)
    with torch.inference_mode():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        got = bb.embed(x)
    assert torch.equal(got, want)
    assert bb.info["weights"] == str(path)
    other = create_backbone("timm:test_vit", pretrained=False, seed=999)
    assert other.info["weights_sha256"] != bb.info["weights_sha256"]


def test_wrong_architecture_weights_name_missing_keys(tmp_path):
    import timm
    from safetensors.torch import save_file

    sd = timm.create_model("test_resnet", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "r.safetensors"))
    with pytest.raises(BackboneError, match=r"r\.safetensors \(the file.s top level\) do not fit.*missing keys"):
        create_backbone("timm:test_vit", weights=str(tmp_path / "r.safetensors"))
    (tmp_path / "t.safetensors").write_bytes((tmp_path / "r.safetensors").read_bytes()[:100])
    with pytest.raises(BackboneError, match=r"cannot load weights .*t\.safetensors"):
        create_backbone("timm:test_vit", weights=str(tmp_path / "t.safetensors"))


def test_malicious_pickle_never_executes(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(BackboneError, match="evil.pt"):
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_open_clip_tiny_config_image_and_text(tiny_clip_config):
    bb = create_backbone(f"open_clip:{tiny_clip_config}", pretrained=False)
    assert bb.dim == 32 and bb.info["preprocess"]["size"] == [32, 32]
    assert bb.embed(_batch(bb)).shape == (3, 32)
    with torch.inference_mode():
        assert bb.text(["a photo of a cat", "a dog"]).shape == (2, 32)
    with pytest.raises(BackboneError, match="names no pretrained tag"):
        create_backbone(f"open_clip:{tiny_clip_config}")


def test_open_clip_weights_round_trip(tmp_path, tiny_clip_config):
    import open_clip
    from safetensors.torch import save_file

    a = create_backbone(f"open_clip:{tiny_clip_config}", pretrained=False, seed=5)
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    b = create_backbone(f"open_clip:{tiny_clip_config}", weights=str(tmp_path / "clip.safetensors"), seed=6)
    x = _batch(a)
    with torch.inference_mode():
        assert torch.equal(a.embed(x), b.embed(x))
    assert open_clip  # imported through the backbone


def test_torch_hub_local_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "someone_tinyrepo_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(
        "dependencies = ['timm']\n"
        "def tiny(pretrained=True):\n"
        "    import timm\n"
        "    return timm.create_model('test_vit', pretrained=False, num_classes=0)\n")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    bb = create_backbone("hub:someone/tinyrepo:tiny", pretrained=False)
    assert bb.dim == 64 and bb.info["preprocess"]["input_size"] == [3, 224, 224]
    assert bb.info["hub_dir"] == str(repo)
    with pytest.raises(BackboneError, match="no weights for hub:someone/missing:tiny"):
        create_backbone("hub:someone/missing:tiny")


def test_pixels_baseline():
    bb = create_backbone("pixels:4")
    x = bb.preprocess(Image.new("RGB", (10, 10), (255, 0, 0)))
    v = bb.embed(x[None])
    assert v.shape == (1, 48) and float(v[0, :16].min()) == 1.0 and float(v[0, 16:].max()) == 0.0
