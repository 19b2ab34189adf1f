"""Backbone spec strings (`timm:NAME`, `open_clip:ARCH/TAG`, `hub:…`, `ckpt:FILE`, `pixels:SIZE`), parsed in exactly one
place; an unknown prefix lists the valid ones."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from embedsearch.core.errors import SpecError

BACKBONE_KINDS = {
    "timm": "timm:NAME[.TAG]        any timm model, e.g. timm:vit_small_patch14_dinov2.lvd142m",
    "open_clip": "open_clip:ARCH[/TAG]   an open_clip image tower, e.g. open_clip:ViT-H-14/laion2b_s32b_b79k (ARCH may be a config .json)",
    "torchvision": "torchvision:NAME[.WEIGHTS]  a torchvision model, e.g. torchvision:resnet50.IMAGENET1K_V2",
    "hf": "hf:ORG/NAME | hf:LOCAL_DIR  a Hugging Face transformers vision model (AutoModel + AutoImageProcessor), e.g. hf:facebook/dinov2-small",
    "hub": "hub:OWNER/REPO:ENTRY   a torch.hub entry (or hub:LOCAL_DIR:ENTRY), e.g. hub:facebookresearch/dinov2:dinov2_vits14",
    "py": "py:FILE.py:FACTORY      your own model: FACTORY() in a file (or py:package.module:FACTORY) returns an nn.Module",
    "ckpt": "ckpt:FILE              a checkpoint written by `embedsearch pretrain`",
    "module": "module:NAME            a ready nn.Module passed from Python (es.build_index(..., model=, transform=))",
    "pixels": "pixels[:SIZE]          raw RGB pixels resized to SIZE×SIZE (default 32): the honest baseline",
}

# the values BackboneConfig accepts (--pool, --interpolation, --precision); the backbone factory checks pool too
POOLS = ("default", "cls", "avg", "max", "tokens", "flatten")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone spec; `raw` is what the user typed and what the manifest records."""

    kind: str
    name: str
    entry: str | None = None
    size: int | None = None
    raw: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def valid_kinds(kinds: dict[str, str]) -> str:
    return "; ".join(v.split("  ")[0].strip() for v in kinds.values())


def parse_backbone(spec: str) -> BackboneSpec:
    """Parse `timm:NAME`, `open_clip:ARCH/TAG`, `hub:OWNER/REPO:ENTRY`, `ckpt:FILE` or `pixels[:SIZE]`.

    >>> parse_backbone("hub:facebookresearch/dinov2:dinov2_vits14").entry
    'dinov2_vits14'
    """
    spec = spec.strip()
    if spec == "pixels" or spec.startswith("pixels:"):
        size = spec.partition(":")[2] or "32"
        if not size.isdigit() or not 1 <= int(size) <= 1024:
            raise SpecError(f"bad pixels size {size!r} in backbone {spec!r}: expected pixels:SIZE with SIZE in 1..1024")
        return BackboneSpec("pixels", "pixels", size=int(size), raw=f"pixels:{int(size)}")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in BACKBONE_KINDS or not rest:
        raise SpecError(f"unknown backbone {spec!r}: expected one of {valid_kinds(BACKBONE_KINDS)}")
    if kind == "timm":
        return BackboneSpec("timm", rest, raw=spec)
    if kind == "open_clip":
        # hf-hub:org/repo names contain a slash themselves and carry their own weights; a .json path is a model
        # config file (registered with open_clip at creation), e.g. a tiny test architecture
        if rest.startswith("hf-hub:") or rest.endswith(".json"):
            return BackboneSpec("open_clip", rest, raw=spec)
        arch, _, tag = rest.partition("/")
        return BackboneSpec("open_clip", arch, entry=tag or None, raw=spec)
    if kind == "torchvision":
        name, _, weights = rest.partition(".")
        return BackboneSpec("torchvision", name, entry=weights or None, raw=spec)
    if kind == "module":
        return BackboneSpec("module", rest, raw=spec)
    if kind == "hf":
        return BackboneSpec("hf", rest, raw=spec)
    if kind == "py":
        location, _, factory = rest.rpartition(":")
        if not location or not factory.isidentifier():
            raise SpecError(f"bad backbone {spec!r}: expected py:FILE.py:FACTORY or py:package.module:FACTORY")
        return BackboneSpec("py", location, entry=factory, raw=spec)
    if kind == "hub":
        m = re.fullmatch(r"([\w.-]+/[\w.-]+):(\w+)", rest)
        local = re.fullmatch(r"(.+):(\w+)", rest)
        if local and (local.group(1).startswith((".", "/", "~")) or Path(local.group(1)).is_dir()):
            return BackboneSpec("hub", str(Path(local.group(1)).expanduser()), entry=local.group(2), raw=spec)
        if not m:
            raise SpecError(f"bad torch.hub backbone {spec!r}: expected hub:OWNER/REPO:ENTRY or hub:LOCAL_DIR:ENTRY")
        return BackboneSpec("hub", m.group(1), entry=m.group(2), raw=spec)
    return BackboneSpec("ckpt", rest, raw=spec)
