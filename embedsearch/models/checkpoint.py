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


# where training scripts put the weights: the trained weights before an EMA copy (the weights hash in the manifest
# identifies which were loaded); timm's train output, torchvision's reference scripts, Lightning, mmcv/OpenMMLab
CONTAINER_KEYS = ("state_dict", "model", "module", "net", "network", "model_state_dict", "state_dict_ema",
                  "model_ema", "ema", "params")
# wrappers' prefixes, stripped when that makes the keys fit the model: DataParallel/DDP, torch.compile, Lightning's
# `self.model` / `self.net`, common backbone attributes, Opacus's GradSampleModule (`_module.`)
WRAPPER_PREFIXES = ("model.", "net.", "network.", "backbone.", "encoder.", "module.", "_module.")
# benign classes training scripts pickle beside the weights (torchvision's reference scripts save their argparse
# Namespace; numpy scalars for metrics): allowed by name in the weights_only unpickler, nothing else
SAFE_GLOBALS = ("argparse.Namespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
                "collections.OrderedDict", "pathlib.PosixPath", "pathlib.WindowsPath")


class StateDict(dict):
    """Tensors by name, and where in the file they were found (`container`: e.g. "state_dict", or "" for a bare
    state dict), so a mismatch can say which part of the checkpoint was used."""

    container: str = ""
    source: str = ""


def _safe_globals():
    import importlib

    out = []
    for name in SAFE_GLOBALS:
        mod, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            continue
    import numpy as np

    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    core = getattr(np, "_core", None)
    if core is not None:  # numpy 2 moved numpy.core: files pickled under numpy 1 name the old module
        out.append((core.multiarray.scalar, "numpy.core.multiarray.scalar"))
    return out


def _hf_folder(p: Path) -> list[Path]:
    """The weight files of a Hugging Face `save_pretrained` folder: one safetensors/bin file, or the shards its
    index file lists."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (p / index).is_file():
            try:
                shards = sorted(set(json.loads((p / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as e:
                raise BackboneError(f"weights folder {p}: {index} is not a shard index ({e})") from None
            return [p / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (p / single).is_file():
            return [p / single]
    raise BackboneError(f"weights folder {p} holds no model.safetensors, pytorch_model.bin or shard index "
                        "(expected a Hugging Face save_pretrained folder)")


def _read(p: Path):
    import torch

    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(p, map_location="cpu", weights_only=True)


def _top_level_global(p: Path) -> str | None:
    """The class of the object a torch file holds at its top level when that object is an instance of a class
    (`torch.save(model)`), as "module.Name"; None for dicts and lists, or when the file cannot be read that far.
    Read with pickletools, which only decodes opcodes and never runs the pickle."""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    return None
                stream = io.BytesIO(z.read(name))
        else:  # legacy format: magic number, protocol version, sys info, then the object itself
            stream = io.BytesIO(p.read_bytes())
            for _ in range(3):
                for _op in pickletools.genops(stream):
                    pass
        strings: list[str] = []
        ops = list(pickletools.genops(stream))
        if len(ops) > 2 and ops[1][0].name == "MARK" and ops[2][1] == "module":
            # before torch 0.4 a pickled module's class went in as the persistent id ("module", class, file, src)
            ops = ops[3:]
        for op, arg, _pos in ops:
            if op.name in ("PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                continue
            if op.name == "GLOBAL":
                return str(arg).replace(" ", ".")
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and len(strings) < 2:
                strings.append(str(arg))  # protocol 4: STACK_GLOBAL takes module and name pushed as strings
                continue
            if op.name == "STACK_GLOBAL" and len(strings) == 2:
                return ".".join(strings)
            return None
    except Exception:  # noqa: BLE001 — a file pickletools cannot walk: no better hint than the generic one
        return None
    return None


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """Load a state dict from safetensors, a torch file read with `weights_only=True` (zip or legacy format; never
    full unpickling), or a Hugging Face `save_pretrained` folder (sharded too); the weights may sit bare or under a
    training script's container key (see CONTAINER_KEYS), with `module.` / `_orig_mod.` prefixes removed."""
    import torch

    p = Path(path)
    if not p.exists():
        raise BackboneError(f"weights file {p} does not exist")
    files = _hf_folder(p) if p.is_dir() else [p]
    sd: dict = {}
    for f in files:
        try:
            part = _read(f)
        except Exception as e:  # noqa: BLE001 — any failure here is "this file is not usable weights"
            msg = str(e).strip().splitlines()[0][:200]
            if "Unsupported global" in str(e):
                g = next((ln.split("GLOBAL", 1)[1].split()[0] for ln in str(e).splitlines() if "GLOBAL " in ln), "?")
                if _top_level_global(f) == g:  # torch.save(model): the model object itself, not a state dict
                    msg = (f"it is a whole pickled model ({g}), not a state dict, and weights_only loading never "
                           "runs pickled code: where you trust the file and its class is importable, re-save "
                           "its weights with torch.save(torch.load(f, weights_only=False).state_dict(), "
                           "'weights.pt')")
                else:
                    msg = (f"it pickles {g}, which weights_only loading refuses (only tensors and plain containers "
                           "are read): save the state dict alone, e.g. torch.save(ckpt['state_dict'], 'weights.pt')")
            raise BackboneError(f"cannot load weights {f}: {type(e).__name__}: {msg}") from None
        if len(files) > 1 and isinstance(part, dict):
            sd.update(part)
        else:
            sd = part
    container = []
    nested = True
    while nested and isinstance(sd, dict):
        nested = False
        for key in CONTAINER_KEYS:
            if key in sd and isinstance(sd[key], dict) and sd[key]:
                sd, nested = sd[key], True
                container.append(key)
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = ", ".join(map(str, list(sd)[:8])) if isinstance(sd, dict) else type(sd).__name__
        raise BackboneError(f"weights file {p} does not hold a state dict of tensors (top level: {keys}); "
                            f"looked under {', '.join(CONTAINER_KEYS)}")
    out = StateDict()
    for k, v in sd.items():
        while k.startswith(("module.", "_orig_mod.")):  # DataParallel / DDP and torch.compile prefixes
            k = k.removeprefix("module.").removeprefix("_orig_mod.")
        out[k] = v
    out.container, out.source = ".".join(container), str(p)
    return out


def _fit(own: dict, sd: dict) -> tuple[dict, str]:
    """`sd` with the wrapper prefix removed that makes the most of its keys the model's own ("" if none helps)."""
    best, best_n, how = sd, sum(k in own for k in sd), ""
    for pre in WRAPPER_PREFIXES:
        if any(k.startswith(pre) for k in sd):
            cand = {k.removeprefix(pre): v for k, v in sd.items()}
            n = sum(k in own for k in cand)
            if n > best_n:
                best, best_n, how = cand, n, pre
    return best, how


def apply_state_dict(model, sd: dict, source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `sd` into `model` as the model's own `load_state_dict` would, with one-line errors: a wrapper prefix
    that makes the keys fit is removed, BatchNorm counters that checkpoints from before torch 0.4.1 never saved are
    filled in (as torch does for them), classifier-head extras named by `ignore_prefixes` are ignored; anything else
    missing, unexpected or misshapen is an error naming the file, the container used and the first keys."""
    import torch

    own = model.state_dict()
    container = getattr(sd, "container", "")
    sd, stripped = _fit(own, dict(sd))
    sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in ignore_prefixes) or k in own}
    for k in own:  # legacy BatchNorm state: `num_batches_tracked` arrived in torch 0.4.1 (2018)
        if k not in sd and k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] + ".running_mean" in sd:
            sd[k] = torch.zeros_like(own[k])
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
        where = f"the file's {container!r} entry" if container else "the file's top level"
        if stripped:
            where += f", prefix {stripped!r} removed"
        raise BackboneError(f"weights {source} ({where}) do not fit the architecture: " + "; ".join(parts))
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
