"""`BackboneConfig`: the one description of how a backbone is made, from the CLI to the forward pass.

Build, the reader (query images and text), verify's repair and `classify` all create a backbone from this object and
nothing else, so a setting can never be forgotten at query time: a query vector computed with other preprocessing
would carry the same weights hash and land, silently, in another space. The index records it whole in its manifest
(`backbone_config`), with the precision it actually ran at and the weights hash it produced.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

from embedsearch.core.errors import IndexStateError, SpecError
from embedsearch.models.specs import INTERPOLATIONS, POOLS, PRECISIONS


@dataclass(frozen=True)
class BackboneConfig:
    """How to create a backbone.

    >>> BackboneConfig("pixels:8").create().dim
    192
    """

    spec: str = "pixels"
    weights: str | None = None  # a local weights file (safetensors, or a torch file read with weights_only)
    pretrained: bool = True  # load the named pretrained weights (False: random init, seeded)
    image_size: int | None = None  # overrides the model's own input size (recorded: it changes the space)
    pool: str = "default"  # default | cls | avg | tokens
    precision: str = "auto"  # autocast: auto | fp32 | bf16 | fp16; an index records the resolved one
    device: str = "auto"  # auto: CUDA when torch sees a GPU, else CPU (a policy, not part of the space)
    channels_last: bool = False
    seed: int = 0  # random-init weights are drawn with it
    weights_sha256: str | None = None  # filled in by the build; a recreated backbone must match it
    layer: str | None = None  # features from this submodule's output (`NAME:input`: its input), then pooled
    # preprocessing for models without their own (py:): resize the shorter side, centre-crop image_size, normalize
    resize: int | None = None
    mean: str | None = None  # "0.485,0.456,0.406"
    std: str | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest

    def __post_init__(self):
        if self.pool not in POOLS:
            raise SpecError(f"unknown --pool {self.pool!r}: expected one of {', '.join(POOLS)}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"unknown --precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise SpecError(f"unknown --interpolation {self.interpolation!r}: expected one of "
                            f"{', '.join(INTERPOLATIONS)}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                try:
                    ok = len([float(x) for x in v.split(",")]) == 3
                except ValueError:
                    ok = False
                if not ok:
                    raise SpecError(f"--{name} {v!r}: expected three comma-separated numbers, e.g. 0.485,0.456,0.406")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "backbone_config") -> BackboneConfig:
        """The inverse of `to_dict`; an unknown or mistyped field is one line naming it."""
        from embedsearch.core.schema import from_record

        try:
            return from_record(cls, d, where)
        except SpecError as e:
            raise IndexStateError(f"{where}: {e}") from None

    @classmethod
    def of_manifest(cls, manifest) -> BackboneConfig:
        """The config an index was built with: recorded whole since `backbone_config` exists; for older indexes,
        assembled from the build record and the space (the same fields, read the same way)."""
        if isinstance(manifest.build.get("backbone"), dict):  # recorded once, in the build record's backbone group
            return cls.from_dict(manifest.build["backbone"], "manifest build.backbone")
        if manifest.backbone_config is not None:  # manifests before the grouped BuildConfig
            return cls.from_dict(manifest.backbone_config)
        b, space = manifest.build, manifest.space
        return cls.from_dict({"spec": space.spec, "weights": b.get("weights"), "pretrained": b.get("pretrained", True),
                              "image_size": b.get("image_size"), "pool": b.get("pool", "default"),
                              "precision": space.precision or "fp32", "device": b.get("device", "auto"),
                              "channels_last": b.get("channels_last", False), "seed": b.get("seed", 0),
                              "weights_sha256": space.weights_sha256,
                              **{k: b.get(k) for k in ("layer", "resize", "mean", "std", "interpolation")}},
                             "manifest build record")

    def resolved(self, **changes) -> BackboneConfig:
        return replace(self, **changes)

    def create(self, device: str | None = None, *, index: str | None = None, recorded: dict | None = None,
               trust_code: bool = False):
        """The backbone, in eval mode on `device` (default: this config's device policy); when the config records
        a weights hash, the recreated weights must match it.

        Without `index`, the person named this config on their own command line (a build): code it runs is
        remembered as theirs (core/trust.py). With `index` (and the manifest's backbone description `recorded`),
        it is that index's backbone re-created for a query or a repair: code must hash as recorded and be code this
        user chose to run (or `trust_code`), and nothing is downloaded (models/code.py)."""
        from embedsearch.models.backbones import create_backbone, no_fetch
        from embedsearch.models.code import check_reattach, record_user_choice
        from embedsearch.models.runtime import resolve_device

        spec = self.spec
        if index is not None:
            spec = check_reattach(self.spec, recorded or {}, index, trust=trust_code)
        with no_fetch() if index is not None else nullcontext():
            bb = create_backbone(spec, weights=self.weights, pretrained=self.pretrained,
                                 image_size=self.image_size, pool=self.pool, seed=self.seed,
                                 device=resolve_device(device or self.device), layer=self.layer,
                                 preprocess={k: getattr(self, k) for k in ("resize", "mean", "std", "interpolation")})
        if index is None:
            record_user_choice(self.spec, bb.info)
        got = bb.info.get("weights_sha256")
        if self.weights_sha256 and got != self.weights_sha256:
            raise IndexStateError(f"the backbone recreated from {self.spec} has different weights than the index was "
                                  f"built with (sha256 {(got or '')[:12]} vs {self.weights_sha256[:12]})")
        bb.config = self
        return bb
