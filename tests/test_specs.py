import pytest

from embedsearch.core.errors import SpecError
from embedsearch.models.specs import parse_backbone
from embedsearch.sources.specs import parse_source


@pytest.mark.parametrize("spec,kind,name,entry", [
    ("timm:vit_small_patch14_dinov2.lvd142m", "timm", "vit_small_patch14_dinov2.lvd142m", None),
    ("open_clip:ViT-H-14/laion2b_s32b_b79k", "open_clip", "ViT-H-14", "laion2b_s32b_b79k"),
    ("open_clip:hf-hub:imageomics/bioclip", "open_clip", "hf-hub:imageomics/bioclip", None),
    ("open_clip:/tmp/x/tiny.json", "open_clip", "/tmp/x/tiny.json", None),
    ("hub:facebookresearch/dinov2:dinov2_vits14", "hub", "facebookresearch/dinov2", "dinov2_vits14"),
    ("hub:ml-jku/MIM-Refiner:mae_refined_l16", "hub", "ml-jku/MIM-Refiner", "mae_refined_l16"),
    ("ckpt:model.safetensors", "ckpt", "model.safetensors", None),
])
def test_backbone_specs(spec, kind, name, entry):
    s = parse_backbone(spec)
    assert (s.kind, s.name, s.entry, s.raw) == (kind, name, entry, spec)


def test_pixels_spec_default_and_size():
    assert parse_backbone("pixels").size == 32
    assert parse_backbone("pixels:8").size == 8
    with pytest.raises(SpecError, match="pixels size"):
        parse_backbone("pixels:abc")


@pytest.mark.parametrize("bad", ["foo:bar", "timm", "vit_small", "hub:dinov2"])
def test_unknown_backbone_lists_valid_kinds(bad):
    with pytest.raises(SpecError) as e:
        parse_backbone(bad)
    assert "timm:" in str(e.value) or "OWNER/REPO" in str(e.value)


def test_source_specs(tmp_path):
    assert parse_source("digits").kind == "digits"
    assert parse_source("mnist:/data/mnist").location == "/data/mnist"
    assert parse_source(str(tmp_path)).kind == "folder"
    (tmp_path / "m.csv").write_text("path\n")
    assert parse_source(str(tmp_path / "m.csv")).kind == "manifest"
    with pytest.raises(SpecError, match="expected one of"):
        parse_source("imagenet:/x")
    with pytest.raises(SpecError, match="does not exist"):
        parse_source(str(tmp_path / "missing.csv"))
