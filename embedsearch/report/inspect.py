"""`embedsearch inspect`: what a backbone sees of one image — the pixels after its preprocessing, the strongest
channels of a layer's feature map, and for ViTs the class token's attention over the patches, head by head — as a
self-contained HTML page plus the PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedsearch.core.errors import SpecError
from embedsearch.report.html import esc, page, to_data_uri

N_CHANNELS = 16


def _to_uint8(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo) * 255).astype(np.uint8) if hi > lo else np.zeros(a.shape, np.uint8)


def _seen(x, info: dict):
    """The model's input as an image: normalisation undone when the preprocessing records mean and std."""
    from PIL import Image

    pre = info.get("preprocess") or {}
    mean, std = pre.get("mean") or pre.get("image_mean"), pre.get("std") or pre.get("image_std")
    a = x.detach().float().cpu().numpy()
    if mean is not None and std is not None and len(mean) == a.shape[0] == len(std):
        a = a * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
    else:
        a = _to_uint8(a)
    return Image.fromarray(np.moveaxis(a, 0, -1))


def _feature_map(model, x, layer: str | None):
    """(name, (C, H, W) array) of the layer: `layer` if given; else a ViT's last block (patch tokens on their grid) or
    a CNN's last module with a spatial output."""
    import torch

    modules = dict(model.named_modules())
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    npt = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if layer is None and hasattr(model, "blocks") and grid is not None:
        layer = f"blocks.{len(model.blocks) - 1}"
    if layer is not None and layer not in modules:
        import difflib

        close = difflib.get_close_matches(layer, list(modules), n=5, cutoff=0.4)
        raise SpecError(f"no layer {layer!r}" + (f"; nearest: {', '.join(close)}" if close else ""))
    got: dict = {}

    def keep(name):
        def hook(mod, args, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor) and (layer == name or (layer is None and t.ndim == 4)):
                got["name"], got["t"] = name, t.detach()
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in modules.items() if n]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if "t" not in got:
        raise SpecError("the model has no layer with a spatial output to show: pass --layer NAME")
    t = got["t"][0]
    if t.ndim == 2 and grid is not None:  # ViT tokens (N, D) → (D, gh, gw)
        t = t[npt:].T.reshape(t.shape[1], *grid)
    if t.ndim != 3:
        raise SpecError(f"layer {got['name']} gives shape {tuple(t.shape)}: no spatial map to show")
    return got["name"], t.float().cpu().numpy()


def _attention(model, x):
    """(heads, gh, gw) attention of the class token over the patches in a timm-style ViT's last block, or None."""
    import torch

    blocks = getattr(model, "blocks", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    if attn is None or not hasattr(attn, "qkv") or grid is None:
        return None
    got = {}
    h = attn.qkv.register_forward_hook(lambda m, a, out: got.setdefault("qkv", out.detach()))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        h.remove()
    qkv = got["qkv"][0]  # (N, 3·D)
    n, d3 = qkv.shape
    heads = attn.num_heads
    q, k, _ = qkv.reshape(n, 3, heads, d3 // 3 // heads).permute(1, 2, 0, 3)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    w = torch.softmax((q @ k.transpose(-2, -1)) * attn.scale, dim=-1)  # (heads, N, N)
    npt = int(getattr(model, "num_prefix_tokens", 1) or 1)
    return w[:, 0, npt:].reshape(heads, *grid).float().cpu().numpy()


def inspect_image(image: str, spec: str, out_html: str | Path, *, weights: str | None = None, pretrained: bool = True,
                  image_size: int | None = None, layer: str | None = None, preprocess: dict | None = None) -> dict:
    """Write OUT.html (self-contained) and OUT-*.png next to it; returns what was drawn."""
    from PIL import Image

    from embedsearch.models.backbones import create_backbone
    from embedsearch.sources.images import load_image

    bb = create_backbone(spec, weights=weights, pretrained=pretrained, image_size=image_size, preprocess=preprocess)
    if bb.model is None:
        raise SpecError(f"{spec} has no network to inspect")
    out_html = Path(out_html)
    stem = out_html.with_suffix("")
    x = bb.preprocess(load_image(image))
    seen = _seen(x, bb.info)
    name, fmap = _feature_map(bb.model, x.unsqueeze(0), layer)
    strongest = np.argsort(-fmap.reshape(len(fmap), -1).mean(1), kind="stable")[:N_CHANNELS]
    tiles = [Image.fromarray(_to_uint8(fmap[c])).resize((96, 96), Image.NEAREST) for c in strongest]
    att = _attention(bb.model, x.unsqueeze(0))
    heads = [] if att is None else [Image.fromarray(_to_uint8(a)).resize((96, 96), Image.NEAREST) for a in att]
    written = {f"{stem.name}-seen.png": seen}
    written |= {f"{stem.name}-channel{c:04d}.png": t for c, t in zip(strongest.tolist(), tiles, strict=True)}
    written |= {f"{stem.name}-attention-head{i}.png": t for i, t in enumerate(heads)}
    for fname, img in written.items():
        img.save(out_html.parent / fname)

    def figure(img, caption):
        return (f"<figure style='display:inline-block;margin:4px'><img src='{to_data_uri(img, 96)}' width=96>"
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    body = [f"<p>{esc(spec)} ({esc(str(bb.info.get('weights')))}), {bb.dim}-d embedding; image "
            f"{esc(str(image))}</p>",
            "<h2>the input as the model sees it (after preprocessing)</h2>",
            f"<img src='{to_data_uri(seen, 224)}' width=224>",
            f"<h2>the {len(tiles)} strongest of {len(fmap)} channels of {esc(name)} "
            f"({fmap.shape[1]}×{fmap.shape[2]})</h2>",
            "".join(figure(t, f"channel {c}") for c, t in zip(strongest.tolist(), tiles, strict=True))]
    if heads:
        body += ["<h2>class-token attention over the patches, last block, per head</h2>",
                 "".join(figure(t, f"head {i}") for i, t in enumerate(heads))]
    out_html.write_text(page(f"inspect: {Path(image).name}", "".join(body)))
    return {"html": str(out_html), "layer": name, "channels": strongest.tolist(), "attention_heads": len(heads),
            "pngs": [str(out_html.parent / f) for f in written]}
