"""Backbone and source spec strings, parsed in exactly one place."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import SpecError

BACKBONE_KINDS = {
    "timm": "timm:NAME[.TAG]        any timm model, e.g. timm:vit_small_patch14_dinov2.lvd142m",
    "open_clip": "open_clip:ARCH[/TAG]   an open_clip image tower, e.g. open_clip:ViT-H-14/laion2b_s32b_b79k (ARCH may be a config .json)",
    "hub": "hub:OWNER/REPO:ENTRY   a torch.hub entry, e.g. hub:facebookresearch/dinov2:dinov2_vits14",
    "ckpt": "ckpt:FILE              a checkpoint written by `embedsearch pretrain`",
    "pixels": "pixels[:SIZE]          raw RGB pixels resized to SIZE×SIZE (default 32): the honest baseline",
}

SOURCE_KINDS = {
    "digits": "digits                 scikit-learn's embedded 8×8 digits (offline default; seeded 75/25 split)",
    "mnist": "mnist:DIR              MNIST idx files (gzipped or not) with the official train/test split",
    "cifar10": "cifar10:DIR            CIFAR-10 python batches with the official train/test split",
    "cifar100": "cifar100:DIR           CIFAR-100 python batches (fine labels) with the official split",
    "folder": "DIR                    ImageFolder layout (class subfolders, optionally under train/ val/ test/)",
    "manifest": "FILE.csv|FILE.parquet  a manifest with a `path` column (+ optional id, label, split, metadata)",
}


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


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str | None = None
    raw: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _valid(kinds: dict[str, str]) -> str:
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
        raise SpecError(f"unknown backbone {spec!r}: expected one of {_valid(BACKBONE_KINDS)}")
    if kind == "timm":
        return BackboneSpec("timm", rest, raw=spec)
    if kind == "open_clip":
        # hf-hub:org/repo names contain a slash themselves and carry their own weights; a .json path is a model
        # config file (registered with open_clip at creation), e.g. a tiny test architecture
        if rest.startswith("hf-hub:") or rest.endswith(".json"):
            return BackboneSpec("open_clip", rest, raw=spec)
        arch, _, tag = rest.partition("/")
        return BackboneSpec("open_clip", arch, entry=tag or None, raw=spec)
    if kind == "hub":
        m = re.fullmatch(r"([\w.-]+/[\w.-]+):(\w+)", rest)
        if not m:
            raise SpecError(f"bad torch.hub backbone {spec!r}: expected hub:OWNER/REPO:ENTRY")
        return BackboneSpec("hub", m.group(1), entry=m.group(2), raw=spec)
    return BackboneSpec("ckpt", rest, raw=spec)


def parse_source(spec: str) -> SourceSpec:
    """Parse `digits`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, a folder or a manifest file."""
    spec = spec.strip()
    if spec == "digits":
        return SourceSpec("digits", None, raw=spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("mnist", "cifar10", "cifar100"):
        if not rest:
            raise SpecError(f"source {spec!r} needs a directory: {kind}:DIR")
        return SourceSpec(kind, rest, raw=spec)
    path = Path(spec)
    if path.is_dir():
        return SourceSpec("folder", str(path), raw=spec)
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        if not path.is_file():
            raise SpecError(f"manifest {spec} does not exist")
        return SourceSpec("manifest", str(path), raw=spec)
    if sep and len(kind) > 1 and not path.exists():
        raise SpecError(f"unknown source {spec!r}: expected one of {_valid(SOURCE_KINDS)}")
    raise SpecError(f"source {spec!r} is not a directory or a .csv/.parquet manifest (expected one of {_valid(SOURCE_KINDS)})")


_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9,
               "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(text: str, what: str = "--max-memory") -> int:
    """A byte count such as `512MiB`, `2GB`, `1.5G` or `1000000`."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise SpecError(f"{what} {text!r} is not a size: expected e.g. 512MiB, 2GB or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
