"""Backbones: a spec string becomes a model with `dim`, `preprocess`, `embed(batch)` and a manifest description."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsearch.core.errors import BackboneError, SpecError
from embedsearch.models.checkpoint import (
    apply_state_dict,
    base_transform,
    ckpt_paths,
    load_checkpoint,
    load_state_dict,
    weights_hash,
)
from embedsearch.models.code import code_ref
from embedsearch.models.specs import BACKBONE_KINDS, POOLS, BackboneSpec, parse_backbone

log = logging.getLogger(__name__)

TOKEN_MAP_WARN_DIM = 50_000


@dataclass
class Backbone:
    """What the runner needs: a preprocessing transform (PIL → tensor), a batched forward and a description.

    `describe()` is what the manifest stores; two backbones that describe themselves the same way produce the same
    embedding space.
    """

    spec: BackboneSpec
    model: Any
    preprocess: Callable
    forward: Callable  # (model, batch tensor) -> (B, D) tensor
    info: dict = field(default_factory=dict)
    dim: int = 0
    text: Callable | None = None  # (list[str]) -> (N, D) tensor, for open_clip
    config: Any = None  # the BackboneConfig it was created from (set by BackboneConfig.create)
    prefix_tokens: int | None = None  # class/register tokens ahead of the patch tokens (None: ask the model)

    def embed(self, batch):
        return self.forward(self.model, batch)

    def describe(self) -> dict:
        return {"spec": self.spec.raw, "kind": self.spec.kind, "dim": self.dim, **self.info}


def list_backbones() -> list[dict]:
    return [{"kind": k, "usage": v.split("  ")[0].strip(), "description": v.split("  ", 1)[1].strip()}
            for k, v in BACKBONE_KINDS.items()]


def offline_error(spec: BackboneSpec, e: Exception, cache_hint: str) -> BackboneError:
    """Weights that are neither cached nor downloadable, as one line: the innermost cause and `cache_hint`."""
    root = e  # the innermost cause says what went wrong (e.g. a DNS failure under the Hub's "cannot find" error)
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    if type(root).__name__ == "OfflineModeIsEnabled":
        return BackboneError(f"no weights for {spec.raw} in the local cache and HF_HUB_OFFLINE is set: "
                             f"pass --weights FILE or {cache_hint}")
    detail = (str(root).splitlines() or [""])[0]
    detail = detail if len(detail) <= 100 else detail[:100].rsplit(" ", 1)[0] + " …"
    return BackboneError(
        f"no weights for {spec.raw} in the local cache and none downloadable ({type(e).__name__}"
        f"{': ' + type(root).__name__ if root is not e else ''}{': ' + detail if detail else ''}): "
        f"pass --weights FILE or {cache_hint}")


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
HUB_PROBE_S = 3.0


def _answers(url: str, timeout: float) -> bool:
    """Whether the host of `url` accepts a TCP connection within `timeout` seconds."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


_NO_FETCH = False


@contextmanager
def no_fetch() -> Iterator[None]:
    """Re-creating an index's own backbone reads only what is already on this machine: the Hugging Face Hub client
    in offline mode, no torch.hub or torchvision download (an index must not make this machine fetch anything)."""
    global _NO_FETCH
    from huggingface_hub import constants

    before, env = (_NO_FETCH, constants.HF_HUB_OFFLINE), os.environ.get("HF_HUB_OFFLINE")
    _NO_FETCH, constants.HF_HUB_OFFLINE = True, True
    os.environ["HF_HUB_OFFLINE"] = "1"  # transformers reads the environment
    try:
        yield
    finally:
        _NO_FETCH, constants.HF_HUB_OFFLINE = before
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def refuse_download(spec: BackboneSpec, wenum) -> None:
    """Under `no_fetch`: torchvision weights must already be in the torch.hub cache."""
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(wenum.url)
    if _NO_FETCH and not cached.is_file():
        raise BackboneError(f"no weights for {spec.raw} in the torch.hub cache ({cached}), and re-creating an "
                            "index's backbone never downloads: fetch them yourself or pass --weights FILE")


@contextmanager
def hub_fail_fast(spec: BackboneSpec) -> Iterator[None]:
    """Download pretrained weights through the Hugging Face Hub client, but without its ~50 s of retries per file
    when the Hub cannot be reached: if its host does not accept a connection within HUB_PROBE_S (and no proxy is
    configured, where a direct connection proves nothing), the client runs in offline mode for this load, so cached
    weights load at once and missing ones fail at once."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARS) or \
            _answers(constants.ENDPOINT, HUB_PROBE_S):
        yield
        return
    log.info("%s does not answer: loading %s from the local Hub cache only", constants.ENDPOINT, spec.raw)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    except (SpecError, BackboneError):
        raise
    except Exception as e:  # noqa: BLE001 — in offline mode, a failed load is weights missing from the cache
        raise BackboneError(f"no weights for {spec.raw} in the local Hub cache ({constants.HF_HUB_CACHE}) and "
                            f"{constants.ENDPOINT} does not answer ({type(e).__name__}): pass --weights FILE, run "
                            "once with network, or set HF_HUB_CACHE to a cache that has them") from None
    finally:
        constants.HF_HUB_OFFLINE = False


def hub_load(spec: BackboneSpec, use_pretrained: bool, make, what: str):
    """`make()` — a model created from the Hugging Face Hub, or its cache — with one-line errors: weights that are
    neither cached nor downloadable name the way out; any other failure names `what` could not be created."""
    try:
        with hub_fail_fast(spec) if use_pretrained else nullcontext():
            return make()
    except (SpecError, BackboneError):
        raise
    except Exception as e:  # noqa: BLE001 — hub/network/cache failures come in many types
        if use_pretrained:
            raise offline_error(spec, e, "set HF_HUB_CACHE to a cache that has them") from None
        raise BackboneError(f"cannot create {what}: {e}") from None


# --------------------------------------------------------------------------------------------- kinds


def _timm(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    import timm
    import torch
    from timm.data import create_transform, resolve_model_data_config

    base = spec.name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        raise SpecError(f"unknown timm model {spec.name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                        "; see timm.list_models()"))
    kwargs: dict = {"num_classes": 0}
    if image_size:
        kwargs["img_size"] = image_size
    use_pretrained = pretrained and weights is None
    torch.manual_seed(seed)

    def make():
        try:
            return timm.create_model(spec.name, pretrained=use_pretrained, **kwargs)
        except TypeError:  # CNNs take no img_size; the transform alone sets their input size
            kwargs.pop("img_size", None)
            return timm.create_model(spec.name, pretrained=use_pretrained, **kwargs)

    model = hub_load(spec, use_pretrained, make, f"timm model {spec.name}")
    if weights:
        head = model.default_cfg.get("classifier", "head")
        heads = tuple(h + "." for h in ([head] if isinstance(head, str) else head))
        apply_state_dict(model, load_state_dict(weights), str(weights), ignore_prefixes=heads + ("head.", "fc."))
    cfg = resolve_model_data_config(model)
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    transform = create_transform(**cfg, is_training=False)

    npt = getattr(model, "num_prefix_tokens", None)
    if pool != "default" and npt is None:
        raise SpecError(f"--pool {pool} applies to ViT-style timm models; {spec.name} has no token map")

    def forward(m, x):
        if pool == "default":
            return m(x)
        tokens = m.forward_features(x)
        if pool == "cls":
            return tokens[:, 0]
        if pool == "avg":
            return tokens[:, npt:].mean(dim=1)
        return tokens.flatten(1)

    info = {
        "model": spec.name,
        "weights": str(weights) if weights else ("pretrained" if use_pretrained else "random-init"),
        "pretrained_cfg": {k: model.pretrained_cfg.get(k) for k in ("hf_hub_id", "tag", "architecture")
                           if model.pretrained_cfg.get(k)} if use_pretrained else None,
        "pool": pool if pool != "default" else f"default ({getattr(model, 'global_pool', 'model')})",
        "preprocess": _json_cfg(cfg),
    }
    return Backbone(spec, model, transform, forward, info)


def _open_clip(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    import open_clip
    import torch

    if pool != "default":
        raise SpecError("--pool applies to timm ViTs; open_clip backbones use the model's own image embedding")
    arch, tag = spec.name, spec.entry
    if arch.endswith(".json"):
        if not Path(arch).is_file():
            raise SpecError(f"open_clip model config {arch} does not exist")
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    if not arch.startswith("hf-hub:") and arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
        raise SpecError(f"unknown open_clip architecture {arch!r}" + (f"; did you mean {', '.join(close)}?" if close
                        else "; see open_clip.list_models()"))
    use_pretrained = pretrained and weights is None and (tag is not None or arch.startswith("hf-hub:"))
    kwargs = {"force_image_size": image_size} if image_size else {}
    torch.manual_seed(seed)
    model, _, preprocess = hub_load(spec, use_pretrained, lambda: open_clip.create_model_and_transforms(
        arch, pretrained=tag if use_pretrained else None, **kwargs), f"open_clip model {arch}")
    if weights:
        apply_state_dict(model, load_state_dict(weights), str(weights))
    elif pretrained and not use_pretrained:
        raise BackboneError(f"{spec.raw} names no pretrained tag: use open_clip:ARCH/TAG, --weights FILE, "
                            "or --random-init for an untrained model")
    tokenizer = open_clip.get_tokenizer(arch)

    def forward(m, x):
        return m.encode_image(x)

    def text(texts: list[str]):
        dev = next(model.parameters()).device
        return model.encode_text(tokenizer(texts).to(dev))

    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    info = {
        "model": arch,
        "pretrained_tag": tag,
        "weights": str(weights) if weights else ("pretrained" if use_pretrained else "random-init"),
        "pool": "model (encode_image)",
        "preprocess": _json_cfg({**pcfg, "image_size": getattr(model.visual, "image_size", None)}),
    }
    return Backbone(spec, model, preprocess, forward, info, text=text)


def _hub(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    torch.manual_seed(seed)
    hub_dir = Path(torch.hub.get_dir())
    if Path(spec.name).is_dir() or spec.name.startswith((".", "/")):  # hub:LOCAL_DIR:ENTRY, a local hubconf.py
        cached = Path(spec.name)
        if not (cached / "hubconf.py").is_file():
            raise SpecError(f"{spec.raw}: {cached} has no hubconf.py")
    else:
        owner, repo = spec.name.split("/")
        cached = next((hub_dir / f"{owner}_{repo}_{ref}" for ref in ("main", "master")
                       if (hub_dir / f"{owner}_{repo}_{ref}" / "hubconf.py").is_file()), None)
    load_kwargs = {} if pretrained and weights is None else {"pretrained": False}
    try:
        if cached is not None:  # the local copy first: works offline, and is what torch.hub would use anyway
            model = torch.hub.load(str(cached), spec.entry, source="local", **load_kwargs)
        elif _NO_FETCH:
            raise BackboneError(f"{spec.raw} is not in the torch.hub cache ({hub_dir}), and re-creating an index's "
                                "backbone never downloads code")
        else:
            model = torch.hub.load(spec.name, spec.entry, trust_repo=True, **load_kwargs)
    except BackboneError:
        raise
    except Exception as e:  # noqa: BLE001
        if cached is None or load_kwargs == {}:
            raise offline_error(spec, e, f"populate the torch.hub cache ({hub_dir}) with {spec.name}") from None
        raise BackboneError(f"torch.hub entry {spec.raw} failed: {e}") from None
    if weights:
        apply_state_dict(model, load_state_dict(weights), str(weights))
    size = image_size or 224
    # torch.hub entries carry no data config; this is the DINOv2 evaluation transform (resize 256 → crop 224,
    # bicubic, ImageNet mean/std), scaled with --image-size
    cfg = {"input_size": (3, size, size), "interpolation": "bicubic", "crop_pct": 224 / 256,
           "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}
    transform = create_transform(**cfg, is_training=False)

    def forward(m, x):
        out = m(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 3:  # a token map: class token unless --pool avg/tokens
            return out.flatten(1) if pool == "tokens" else out[:, 1:].mean(1) if pool == "avg" else out[:, 0]
        return out

    typed = parse_backbone(spec.raw) if spec.raw else spec  # as typed, also when re-attached by its path
    ref = code_ref(typed)  # after a download: the copy torch.hub just made
    info = {"model": f"{typed.name}:{spec.entry}", "hub_dir": str(cached) if cached else None,
            "code_identity": ref.identity, "code_path": str(ref.path) if ref.path else None,
            "code_sha256": ref.sha256,
            "weights": str(weights) if weights else ("pretrained" if load_kwargs == {} else "random-init"),
            "pool": pool, "preprocess": _json_cfg(cfg)}
    return Backbone(spec, model, transform, forward, info)


def _pixels(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    import torch
    from torchvision.transforms import v2

    if weights:
        raise SpecError("the pixels backbone has no weights")
    size = image_size or spec.size
    transform = v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True),
                            v2.ToDtype(torch.float32, scale=True)])

    def forward(_, x):
        return x.flatten(1)

    info = {"model": "pixels", "weights": None, "pool": "flatten",
            "preprocess": {"input_size": [3, size, size], "interpolation": "bilinear (antialias)", "scale": "[0, 1]"}}
    return Backbone(spec, None, transform, forward, info)


def _ckpt(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    """A ViT trained by `embedsearch pretrain`, with the preprocessing it was trained with."""
    if weights:
        raise SpecError("ckpt: backbones carry their own weights; drop --weights")
    vit, meta = load_checkpoint(spec.name)
    pre = meta["preprocess"]
    size = pre["input_size"][-1]
    if image_size and image_size != size:
        raise SpecError(f"{spec.raw} was trained at {size} px; --image-size {image_size} would change its space")
    transform = base_transform(size, pre["mean"], pre["std"])
    train = {k: meta["pretrain"].get(k) for k in ("method", "epochs", "seed", "where")}
    if "cnn" in meta:  # penultimate features: the pooled vector the classifier reads
        if pool not in ("default", "avg"):
            raise SpecError(f"{spec.raw} is a CNN: its features are average-pooled (drop --pool {pool})")
        info = {"model": f"{meta['cnn']['arch']} (supervised, {meta['cnn']['n_classes']} classes)",
                "weights": str(ckpt_paths(spec.name)["weights"]), "pool": "avg (penultimate features)",
                "preprocess": pre, "pretrain": {**train, "arch": meta["cnn"]["arch"]},
                "epochs_done": meta["epochs_done"], "best_epoch": meta.get("best_epoch")}
        return Backbone(spec, vit, transform, lambda m, x: m.features(x), info)
    npt = vit.num_prefix_tokens

    def forward(m, x):
        tokens = m.forward_features(x)
        if pool == "avg":
            return tokens[:, npt:].mean(dim=1)
        if pool == "tokens":
            return tokens.flatten(1)
        return tokens[:, 0]

    model = f"video ViT {meta['video']}" if "video" in meta else f"ViT {meta['vit']}"
    info = {"model": model, "weights": str(ckpt_paths(spec.name)["weights"]),
            "pool": "cls" if pool == "default" else pool, "preprocess": pre,
            "pretrain": train, "epochs_done": meta["epochs_done"]}
    return Backbone(spec, vit, transform, forward, info)


def _last_linear(model):
    """(name, module) of the last nn.Linear in module order: a classifier's head, whose input is the penultimate
    feature vector (torchvision's fc / classifier[-1] / heads.head / head alike)."""
    import torch

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return found[-1] if found else (None, None)


def _torchvision(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    """torchvision's registry; preprocessing from the weights' own transforms; penultimate features by default."""
    import torch
    from torchvision import models as tvm

    names = tvm.list_models()
    if spec.name not in names:
        close = difflib.get_close_matches(spec.name, names, n=5, cutoff=0.6)
        raise SpecError(f"unknown torchvision model {spec.name!r}" + (f"; did you mean {', '.join(close)}?" if close
                        else "; see torchvision.models.list_models()"))
    enum = tvm.get_model_weights(spec.name)
    tags = [w.name for w in enum]
    if spec.entry is not None and spec.entry not in tags:
        raise SpecError(f"torchvision {spec.name} has no weights {spec.entry!r}: expected one of {', '.join(tags)}")
    wenum = enum[spec.entry] if spec.entry else enum.DEFAULT
    use_pretrained = pretrained and weights is None
    torch.manual_seed(seed)
    if use_pretrained:
        refuse_download(spec, wenum)
    try:
        model = tvm.get_model(spec.name, weights=wenum if use_pretrained else None)
    except Exception as e:  # noqa: BLE001 — download failures come in many types
        if use_pretrained:
            raise offline_error(spec, e, f"put the file in the torch.hub cache ({torch.hub.get_dir()}/checkpoints)"
                                ) from None
        raise BackboneError(f"cannot create torchvision model {spec.name}: {e}") from None
    if weights:
        apply_state_dict(model, load_state_dict(weights), str(weights))
    base = wenum.transforms()
    if image_size:  # keep the weights' resize/crop ratio
        base = wenum.transforms(crop_size=image_size,
                                resize_size=round(image_size * base.resize_size[0] / base.crop_size[0]))
    if pool != "default":
        raise SpecError(f"--pool {pool} for torchvision models applies with --layer NAME (default: the penultimate "
                        "features)")
    head_name, head = _last_linear(model)
    if head is None:
        raise SpecError(f"torchvision {spec.name} has no linear classifier to take features before: pass --layer")

    def forward(m, x):
        return _capture(m, head, x, "input", "default")

    info = {"model": spec.name, "weights_enum": wenum.name,
            "weights": str(weights) if weights else ("pretrained" if use_pretrained else "random-init"),
            "pool": f"penultimate (input of {head_name})",
            "preprocess": {"resize_size": list(base.resize_size), "crop_size": list(base.crop_size),
                           "mean": list(base.mean), "std": list(base.std), "interpolation": base.interpolation.value}}
    return Backbone(spec, model, base, forward, info)


def _hf(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    """A transformers vision model: AutoModel + AutoImageProcessor, pooled as the family defines it (the pooler
    output where the model has one, else the mean of its tokens or feature map; `--pool` overrides), and for
    CLIP / SigLIP-style models their image embedding, with the text tower kept for text queries and zero-shot."""
    import torch

    try:
        import transformers
    except ImportError:
        raise BackboneError("hf: backbones need transformers: pip install 'embedsearch[hf]'") from None
    if image_size:
        raise SpecError("--image-size is not applied to hf: backbones: their image processor's size is used "
                        "(and recorded)")
    name = spec.name
    local = Path(name).expanduser().is_dir()
    use_pretrained = pretrained and weights is None
    torch.manual_seed(seed)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with hub_fail_fast(spec) if not local else nullcontext():
            if use_pretrained:
                model = transformers.AutoModel.from_pretrained(name)
            else:
                model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(name))
            processor = transformers.AutoImageProcessor.from_pretrained(name)
    except (SpecError, BackboneError):
        raise
    except Exception as e:  # noqa: BLE001 — hub, cache and config failures come in many types
        if not local:
            raise offline_error(spec, e, "set HF_HUB_CACHE to a cache that has them, or pass hf:LOCAL_DIR") from None
        raise BackboneError(f"cannot load the transformers model in {name}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160]}") from None
    if weights:
        apply_state_dict(model, load_state_dict(weights), str(weights))
    config = model.config
    model_type = getattr(config, "model_type", "")
    npt = (1 + int(getattr(config, "num_register_tokens", 0) or 0)) if any(
        t in model_type for t in ("vit", "dinov2", "deit", "beit", "dinov3")) else 0
    clip_like = hasattr(model, "get_image_features")

    def transform(img):
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    def forward(m, x):
        if clip_like and pool == "default":
            out = m.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = (m.vision_model if clip_like else m)(pixel_values=x)
        if pool == "default" and getattr(out, "pooler_output", None) is not None:
            t = out.pooler_output
            return t.flatten(1) if t.ndim > 2 else t
        return _pool_output(out.last_hidden_state, pool, npt)

    text = None
    if clip_like and hasattr(model, "get_text_features"):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        except Exception:  # noqa: BLE001 — a vision-only copy: image search still works
            tokenizer = None
        if tokenizer is not None:
            def text(texts: list[str]):
                dev = next(model.parameters()).device
                limit = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
                enc = tokenizer(texts, padding=True, truncation=limit is not None, max_length=limit, return_tensors="pt")
                out = model.get_text_features(**enc.to(dev))  # truncated to the text tower's context, as open_clip
                return out if isinstance(out, torch.Tensor) else out.pooler_output

    pcfg = {k: v for k, v in processor.to_dict().items()
            if k in ("size", "crop_size", "do_resize", "do_center_crop", "resample", "image_mean", "image_std",
                     "do_normalize", "rescale_factor", "image_processor_type")}
    info = {"model": name, "model_type": model_type,
            "weights": str(weights) if weights else ("pretrained" if use_pretrained else "random-init"),
            "pool": ("image embedding" if clip_like else "pooler output, else token mean") if pool == "default"
            else pool, "preprocess": pcfg, "text_tower": text is not None}
    return Backbone(spec, model, transform, forward, info, text=text, prefix_tokens=npt)


def _preprocess_flags(spec: BackboneSpec, image_size, pre: dict):
    """The explicit preprocessing a model without a config needs: resize the shorter side to --resize (default
    --image-size), centre-crop --image-size, scale to [0, 1], normalize with --mean/--std."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    missing = [f for f, v in (("--image-size", image_size), ("--mean", pre.get("mean")), ("--std", pre.get("std")))
               if not v]
    if missing:
        raise SpecError(f"{spec.raw} carries no preprocessing: pass {', '.join(missing)} (and optionally --resize, "
                        "--interpolation) as your training script used them")
    resize = pre.get("resize") or image_size
    interp = pre.get("interpolation") or "bilinear"
    mean = [float(v) for v in pre["mean"].split(",")]
    std = [float(v) for v in pre["std"].split(",")]
    t = v2.Compose([v2.PILToTensor(), v2.Resize(resize, interpolation=InterpolationMode(interp), antialias=True),
                    v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    return t, {"resize": resize, "crop_size": image_size, "interpolation": interp, "mean": mean, "std": std}


def _py(spec: BackboneSpec, weights, pretrained, image_size, pool, seed, pre=None) -> Backbone:
    """FACTORY() from the user's own file or module; weights from --weights (a training script's checkpoint)."""
    import hashlib
    import importlib
    import importlib.util

    import torch

    where = spec.name
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise SpecError(f"{spec.raw}: file {path} does not exist")
        path = path.absolute()
        code = path.read_bytes()  # the bytes hashed are the bytes run
        mod_name = f"embedsearch_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(mspec)
        try:
            exec(compile(code, str(path), "exec"), module.__dict__)  # noqa: S102 — the file the user named
        except Exception as e:  # noqa: BLE001 — the user's code: any failure is one line naming it
            raise SpecError(f"{spec.raw}: importing {path} failed ({type(e).__name__}: {e})") from None
        identity, code_path = f"py:{path}:{spec.entry}", str(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise SpecError(f"{spec.raw}: cannot import {where} ({e})") from None
        f = getattr(module, "__file__", None)
        code = Path(f).read_bytes() if f else b""
        identity, code_path = f"py:{where}:{spec.entry}", f
    factory = getattr(module, spec.entry, None)
    if not callable(factory):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(spec.entry, names, n=3, cutoff=0.5)
        raise SpecError(f"{spec.raw}: {where} has no callable {spec.entry!r}"
                        + (f"; did you mean {', '.join(close)}?" if close else ""))
    torch.manual_seed(seed)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise SpecError(f"{spec.raw}: {spec.entry}() failed ({type(e).__name__}: {e})") from None
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"{spec.raw}: {spec.entry}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        apply_state_dict(model, load_state_dict(weights), str(weights))
    elif pretrained:
        raise BackboneError(f"{spec.raw}: a py: model gets its weights from --weights FILE (or pass --random-init "
                            "for the factory's own initialisation)")
    transform, pcfg = _preprocess_flags(spec, image_size, pre or {})

    def forward(m, x):
        return _pool_output(m(x), pool)

    shown = parse_backbone(spec.raw).name if spec.raw else where  # as typed, also when re-attached by its path
    info = {"model": f"{shown}:{spec.entry}", "code_sha256": hashlib.sha256(code).hexdigest(),
            "code_identity": identity, "code_path": code_path,
            "weights": str(weights) if weights else "random-init", "pool": f"{pool} of the model output",
            "preprocess": pcfg}
    return Backbone(spec, model, transform, forward, info)


# --------------------------------------------------------------------------------------------- layers and pooling


class _Captured(Exception):  # noqa: N818 — control flow: stops the forward once the wanted layer has run
    pass


def _capture(model, module, x, side: str, pool: str, prefix_tokens: int = 0):
    """Run `model` on x up to `module` and return its output (or input), pooled; the rest of the forward is skipped."""
    got = {}

    def hook(mod, args, out=None):
        got["t"] = args[0] if side == "input" else out
        raise _Captured

    h = module.register_forward_pre_hook(hook) if side == "input" else module.register_forward_hook(hook)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        h.remove()
    if "t" not in got:
        raise BackboneError("the requested layer did not run in the model's forward")
    return _pool_output(got["t"], pool, prefix_tokens)


def _pool_output(t, pool: str, prefix_tokens: int = 0):
    """A feature vector per item from a layer's tensor: (B, C, H, W) → avg / max / flatten; (B, N, D) tokens →
    cls / avg / max / tokens (flatten); (B, D) as is. `default`: avg for maps, the first token when the model has
    prefix tokens (else avg) for token maps."""
    if isinstance(t, (tuple, list)):
        t = t[0]
    if t.ndim == 2:
        if pool not in ("default", "flatten", "avg", "max"):
            raise SpecError(f"--pool {pool} needs a token or feature map; this layer gives (batch, {t.shape[1]})")
        return t
    if t.ndim == 4:
        if pool in ("default", "avg"):
            return t.mean(dim=(2, 3))
        if pool == "max":
            return t.amax(dim=(2, 3))
        if pool in ("flatten", "tokens"):
            return t.flatten(1)
        raise SpecError(f"--pool {pool} applies to token maps; this layer gives a (batch, C, H, W) feature map")
    if t.ndim == 3:
        if pool == "cls" or (pool == "default" and prefix_tokens):
            return t[:, 0]
        if pool in ("default", "avg"):
            return t[:, prefix_tokens:].mean(dim=1)
        if pool == "max":
            return t[:, prefix_tokens:].amax(dim=1)
        return t.flatten(1)
    return t.flatten(1)


def _with_layer(bb: Backbone, layer: str, pool: str) -> Backbone:
    """Features from a named submodule (`NAME` its output, `NAME:input` its input) instead of the default ones."""
    if bb.model is None:
        raise SpecError(f"--layer needs a network; {bb.spec.raw} has none")
    name, _, side = layer.partition(":")
    side = side or "output"
    if side not in ("output", "input"):
        raise SpecError(f"--layer {layer!r}: expected NAME or NAME:input")
    modules = dict(bb.model.named_modules())
    if name not in modules or not name:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
        raise SpecError(f"{bb.spec.raw} has no layer {name!r}" + (f"; nearest: {', '.join(close)}" if close else "")
                        + " (list them with `embedsearch layers SPEC`)")
    module = modules[name]
    npt = bb.prefix_tokens if bb.prefix_tokens is not None else int(getattr(bb.model, "num_prefix_tokens", 0) or 0)
    bb.forward = lambda m, x: _capture(m, module, x, side, pool, npt)
    bb.info["layer"] = layer
    bb.info["pool"] = f"{pool} of {name} ({side})"
    return bb


def list_layers(spec: str, **kwargs) -> list[dict]:
    """Every named submodule of a backbone with its output shape for one sample input (`embedsearch layers`)."""
    import torch
    from PIL import Image

    bb = create_backbone(spec, **kwargs)
    if bb.model is None:
        return []
    shapes, hooks = {}, []

    def record(name):
        def hook(mod, args, out):
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            shapes.setdefault(name, list(t.shape) if hasattr(t, "shape") else None)
        return hook

    for n, m in bb.model.named_modules():
        if n:
            hooks.append(m.register_forward_hook(record(n)))
    x = bb.preprocess(Image.new("RGB", (64, 64))).unsqueeze(0)
    try:
        with torch.inference_mode():
            bb.model(x)
    finally:
        for h in hooks:
            h.remove()
    return [{"layer": n, "type": type(m).__name__, "output_shape": shapes.get(n)}
            for n, m in bb.model.named_modules() if n]


_BUILDERS = {"timm": _timm, "open_clip": _open_clip, "torchvision": _torchvision, "hf": _hf, "hub": _hub, "py": _py,
             "pixels": _pixels, "ckpt": _ckpt}


def _json_cfg(cfg: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if v is not None}


def create_backbone(
    spec: str | BackboneSpec,
    *,
    weights: str | None = None,
    pretrained: bool = True,
    image_size: int | None = None,
    pool: str = "default",
    seed: int = 0,
    device: str = "cpu",
    layer: str | None = None,
    preprocess: dict | None = None,
) -> Backbone:
    """Create a backbone from its spec; the model is in eval mode on `device` and its output dimension probed.
    Build, reader, verify and classify go through `BackboneConfig.create`, which calls this.

    >>> bb = create_backbone("pixels:8"); bb.dim
    192
    """

    s = parse_backbone(spec) if isinstance(spec, str) else spec
    if pool not in POOLS:
        raise SpecError(f"unknown --pool {pool!r}: expected one of {', '.join(POOLS)}")
    if s.kind == "module":
        raise BackboneError(f"{s.raw} was a Python nn.Module passed to build_index; pass it again: "
                            "es.open_index(NAME, model=..., transform=...) (or es.build_index(..., model=...))")
    if layer:
        # a layer's tensor is pooled by _pool_output; the builders keep their own defaults
        bb = _BUILDERS[s.kind](s, weights, pretrained, image_size, "default" if s.kind != "py" else pool, seed,
                               preprocess)
        bb = _with_layer(bb, layer, pool)
    else:
        bb = _BUILDERS[s.kind](s, weights, pretrained, image_size, pool, seed, preprocess)
    return _finish(bb, device, seed)


def module_backbone(model, transform, name: str, *, pool: str = "default", layer: str | None = None,
                    device: str = "cpu") -> Backbone:
    """A backbone from a ready `nn.Module` and its transform (PIL image → tensor), for notebooks: its output (or
    `layer`'s) pooled like any other; the spec `module:NAME` and the weights hash identify its space, and the class's
    source code (when Python can find it) is hashed into the record."""
    import hashlib
    import inspect

    import torch

    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"model= must be a torch.nn.Module, not {type(model).__name__}")
    if not callable(transform):
        raise SpecError("transform= must be a callable taking a PIL image and returning a tensor")
    spec = parse_backbone(f"module:{name}")
    try:
        code = inspect.getsource(type(model)).encode()
    except (OSError, TypeError):
        code = b""
    info = {"model": f"{type(model).__module__}.{type(model).__qualname__}", "weights": "as passed",
            "code_sha256": hashlib.sha256(code).hexdigest() if code else None,
            "pool": f"{pool} of the model output", "preprocess": {"transform": repr(transform)[:500]}}
    bb = Backbone(spec, model, transform, lambda m, x: _pool_output(m(x), pool), info)
    if layer:
        bb = _with_layer(bb, layer, pool)
    return _finish(bb, device, 0)


def _finish(bb: Backbone, device: str, seed: int) -> Backbone:
    """Eval mode on `device`, the weights hash, the parameter count, and the output dimension probed."""
    import torch

    s = bb.spec
    if bb.model is not None:
        bb.model.eval().to(device)
        bb.info["weights_sha256"] = weights_hash(bb.model)
        bb.info["params"] = sum(p.numel() for p in bb.model.parameters())
    bb.info["seed"] = seed if bb.info.get("weights") == "random-init" else None
    from PIL import Image

    probe = bb.preprocess(Image.new("RGB", (32, 32))).unsqueeze(0).to(device)
    try:
        with torch.inference_mode():
            bb.dim = int(bb.embed(probe).shape[-1])
    except (SpecError, BackboneError):
        raise
    except Exception as e:  # noqa: BLE001 — the model's own forward (often the user's code): one line naming it
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise BackboneError(f"{s.raw}: the forward pass on a {tuple(probe.shape)} input failed ({type(e).__name__}: "
                            f"{msg}); check --image-size and the model's expected input") from None
    if bb.dim > TOKEN_MAP_WARN_DIM:
        log.warning("%s gives %d-d embeddings (%.1f KiB each as float16): token maps are large, and distance-based "
                    "methods on them are dominated by noise; prefer --pool cls or avg", s.raw, bb.dim, bb.dim * 2 / 1024)
    return bb
