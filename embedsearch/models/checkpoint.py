"""Weights on disk: state dicts from safetensors or `weights_only` torch files, fitted to a model with one-line
errors, the weights hash that identifies an embedding space, and the `ckpt:` format that `embedsearch pretrain`
writes and the `ckpt:` backbone reads (OUT.safetensors + OUT.json side by side)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from embedsearch.core.errors import BackboneError
from embedsearch.core.files import atomic_path, atomic_write_bytes

CKPT_FORMAT = "embedsearch-ckpt/1"


def load_state_dict(path: str | os.PathLike) -> dict:
    """Load a state dict from safetensors, or from a torch file with `weights_only=True` (never full unpickling)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise BackboneError(f"weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any failure here is "this file is not usable weights"
        msg = str(e).splitlines()[0][:200]
        raise BackboneError(f"cannot load weights {p}: {type(e).__name__}: {msg}") from None
    # what training scripts save: the weights alone, or nested under one of these keys (the trained weights
    # before an EMA copy; the weights hash in the manifest identifies which were loaded)
    nested = True
    while nested and isinstance(sd, dict):
        nested = False
        for key in ("state_dict", "model", "module", "net", "state_dict_ema", "model_ema", "ema"):
            if key in sd and isinstance(sd[key], dict) and sd[key]:
                sd, nested = sd[key], True
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"weights file {p} does not hold a state dict of tensors")
    out = {}
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):  # DataParallel / DDP and torch.compile prefixes
            k = k.removeprefix("module.").removeprefix("_orig_mod.")
        out[k] = v
    return out


def apply_state_dict(model, sd: dict, source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `sd` into `model`; missing keys are an error naming the file, classifier-head extras are ignored."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in ignore_prefixes) or k in own}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape_bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''})")
        if shape_bad:
            k = shape_bad[0]
            parts.append(f"shape mismatch at {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        raise BackboneError(f"weights {source} do not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def weights_hash(model) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): identifies the weights, not the file."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- the ckpt: format


def ckpt_paths(out: Path) -> dict[str, Path]:
    out = Path(out).with_suffix("") if Path(out).suffix in (".safetensors", ".json") else Path(out)
    return {"weights": out.with_suffix(".safetensors"), "json": out.with_suffix(".json"),
            "state": out.with_suffix(".state.pt"), "png": out.with_suffix(".loss.png")}


def base_transform(size: int, mean, std):
    """PIL → normalized tensor at the training size: the `ckpt:` backbone's preprocessing."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def save_checkpoint(out: Path, weights: dict, meta: dict) -> None:
    """Write the encoder's weights and the JSON that describes them (architecture, preprocessing, training run)."""
    from safetensors.torch import save_file

    p = ckpt_paths(out)
    p["weights"].parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p["weights"]) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp))
    atomic_write_bytes(p["json"], json.dumps({"format": CKPT_FORMAT, **meta}, indent=1).encode())


def load_checkpoint(path: str | Path):
    """(encoder model, checkpoint JSON) of a `ckpt:FILE` backbone; the file may be given with or without suffix."""
    p = ckpt_paths(Path(path))
    if not p["json"].exists() or not p["weights"].exists():
        raise BackboneError(f"checkpoint {path}: expected {p['weights'].name} and {p['json'].name} side by side "
                            "(written by `embedsearch pretrain`)")
    meta = json.loads(p["json"].read_text())
    if meta.get("format") != CKPT_FORMAT:
        raise BackboneError(f"checkpoint {p['json']} is not an embedsearch checkpoint ({meta.get('format')})")
    if "cnn" in meta:  # a supervised small CNN (`pretrain --method supervised --arch cnn-*`)
        from embedsearch.models.cnn import make_cnn

        model = make_cnn(meta["cnn"]["arch"], meta["cnn"]["n_classes"])
    elif "video" in meta:  # the video MAE's tubelet ViT (`pretrain --method video-mae`)
        from embedsearch.models.video_vit import make_video_vit

        model = make_video_vit(**meta["video"])
    else:
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(**meta["vit"])
    apply_state_dict(model, load_state_dict(p["weights"]), str(p["weights"]))
    return model, meta
