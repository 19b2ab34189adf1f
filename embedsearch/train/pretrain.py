"""Self-supervised pretraining of a small timm ViT (MAE, InfoNCE, MAE+InfoNCE); checkpoints become `ckpt:` backbones."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from embedsearch.core.errors import ConfigError, EmbedsearchError, first_line
from embedsearch.core.files import atomic_path, crash_point
from embedsearch.core.progress import check_interrupt
from embedsearch.models.checkpoint import ckpt_paths, save_checkpoint

log = logging.getLogger(__name__)

METHODS = ("mae", "infonce", "mae+infonce", "video-mae")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run; stored next to the checkpoint."""

    method: str = "mae+infonce"
    image_size: int = 0          # 0: from the data (8, 28, 32 …)
    patch_size: int = 0          # 0: image_size // 4 (at least 2)
    depth: int = 4
    width: int = 0               # 0: 64 for images ≤ 16 px, else 128
    heads: int = 4
    mask_ratio: float = 0.5
    frames: int = 3              # video-mae: each image repeated as this many frames
    tubelet: int = 1             # video-mae: frames per token (a tubelet is tubelet × patch × patch)
    decoder_depth: int = 2
    decoder_width: int = 64
    temperature: float = 0.1
    mae_weight: float = 1.0
    infonce_weight: float = 1.0
    augment: tuple[str, ...] = ("crop", "affine")
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    seed: int = 0
    where: str | None = "split = 'train'"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        import math

        for name in ("mask_ratio", "temperature", "mae_weight", "infonce_weight", "lr", "weight_decay"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number (got {getattr(self, name)})")
        checks = [("epochs", self.epochs >= 1, "at least 1"), ("batch_size", self.batch_size >= 1, "at least 1"),
                  ("depth", self.depth >= 1, "at least 1"), ("heads", self.heads >= 1, "at least 1"),
                  ("decoder_depth", self.decoder_depth >= 0, "0 or more"), ("lr", self.lr > 0, "above 0"),
                  ("temperature", self.temperature > 0, "above 0"), ("mask_ratio", 0 < self.mask_ratio < 1,
                                                                      "between 0 and 1"),
                  ("mae_weight", self.mae_weight >= 0, "0 or more"), ("infonce_weight", self.infonce_weight >= 0,
                                                                      "0 or more")]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')} must be {want} (got {getattr(self, name)})")
        if self.method == "video-mae" and (self.frames < 1 or self.tubelet < 1 or self.frames % self.tubelet):
            raise ConfigError(f"--tubelet {self.tubelet} must divide --frames {self.frames} (both at least 1)")
        if "infonce" in self.method and self.batch_size < 2:
            raise ConfigError("InfoNCE needs --batch-size of at least 2 (each image's negatives are the "
                                   "other images of its batch)")

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, data_size: int) -> PretrainConfig:
        """Fill the size-dependent defaults: 8×8 → patch 2, 28×28 → patch 7, 32×32 → patch 8 (16 tokens each)."""
        size = self.image_size or data_size
        patch = self.patch_size or max(2, size // 4)
        if size % patch:
            raise ConfigError(f"--patch-size {patch} does not divide --image-size {size}")
        width = self.width or (64 if size <= 16 else 128)
        if width % self.heads:
            raise ConfigError(f"--heads {self.heads} does not divide the width {width} (set --width or --heads)")
        return replace(self, image_size=size, patch_size=patch, width=width)


def vit_kwargs(cfg: PretrainConfig) -> dict:
    return {"img_size": cfg.image_size, "patch_size": cfg.patch_size, "embed_dim": cfg.width, "depth": cfg.depth,
            "num_heads": cfg.heads, "num_classes": 0, "global_pool": "token", "class_token": True}


def video_kwargs(cfg: PretrainConfig) -> dict:
    return {"img_size": cfg.image_size, "patch_size": cfg.patch_size, "frames": cfg.frames, "tubelet": cfg.tubelet,
            "embed_dim": cfg.width, "depth": cfg.depth, "num_heads": cfg.heads}


def make_vit(cfg: PretrainConfig):
    if cfg.method == "video-mae":
        from embedsearch.models.video_vit import make_video_vit

        return make_video_vit(**video_kwargs(cfg))
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**vit_kwargs(cfg))


def normalize(x, cfg: PretrainConfig):
    import torch

    mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def random_views(x, cfg: PretrainConfig, gen):
    """Batched augmentation of [0, 1] images (B, 3, S, S) with per-sample parameters, in one grid_sample: random
    resized crop (area 0.6–1, aspect 0.85–1.15), rotation ±12°, translation ±8 %, optional flip and brightness /
    contrast jitter. No flips by default: a mirrored digit is another digit."""
    import math as _m

    import torch
    import torch.nn.functional as F

    B = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, generator=gen, device=x.device)  # noqa: E731
    one, zero = torch.ones(B, device=x.device), torch.zeros(B, device=x.device)
    if "crop" in cfg.augment:
        area, ratio = u(0.6, 1.0), u(0.85, 1.15)
        sx, sy = torch.sqrt(area * ratio).clamp(max=1), torch.sqrt(area / ratio).clamp(max=1)
        cx, cy = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
    else:
        sx, sy, cx, cy = one, one, zero, zero
    if "affine" in cfg.augment:
        th = u(-12, 12) * _m.pi / 180
        cx, cy = cx + u(-0.16, 0.16), cy + u(-0.16, 0.16)  # ±8 % of the side in [-1, 1] coordinates
    else:
        th = zero
    if "flip" in cfg.augment:
        sx = sx * torch.where(torch.rand(B, generator=gen, device=x.device) < 0.5, -one, one)
    cos, sin = torch.cos(th), torch.sin(th)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, cx], 1), torch.stack([sin * sx, cos * sy, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if "color" in cfg.augment:
        b = u(0.6, 1.4).view(B, 1, 1, 1)
        c = u(0.6, 1.4).view(B, 1, 1, 1)
        m = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - m) * c + m) * b
    return out.clamp(0, 1)


# --------------------------------------------------------------------------------------------- model


def _build_mae_parts(cfg: PretrainConfig, vit):
    import torch
    from timm.models.vision_transformer import Block

    video = cfg.method == "video-mae"
    n = vit.n_tokens if video else (cfg.image_size // cfg.patch_size) ** 2
    out = cfg.patch_size ** 2 * 3 * (cfg.tubelet if video else 1)
    dec = torch.nn.ModuleDict({
        "embed": torch.nn.Linear(cfg.width, cfg.decoder_width),
        "blocks": torch.nn.Sequential(*[Block(cfg.decoder_width, max(1, cfg.decoder_width // 32))
                                        for _ in range(cfg.decoder_depth)]),
        "norm": torch.nn.LayerNorm(cfg.decoder_width),
        "pred": torch.nn.Linear(cfg.decoder_width, out),
    })
    dec.mask_token = torch.nn.Parameter(torch.zeros(1, 1, cfg.decoder_width))
    dec.pos = torch.nn.Parameter(torch.randn(1, n + 1, cfg.decoder_width) * 0.02)
    return dec


def patchify(imgs, p: int):
    B, C, H, W = imgs.shape
    x = imgs.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def mae_loss(vit, dec, imgs, cfg: PretrainConfig, gen):
    """MSE on the masked patches (MAE): encode the visible patches, decode all, score only the hidden ones."""
    import torch

    x = vit.patch_embed(imgs)
    B, N, D = x.shape
    pos = vit.pos_embed
    x = x + pos[:, 1:]
    keep_n = max(1, int(round(N * (1 - cfg.mask_ratio))))
    noise = torch.rand(B, N, generator=gen, device=imgs.device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    keep = shuffle[:, :keep_n]
    x = torch.gather(x, 1, keep[..., None].expand(-1, -1, D))
    cls = (vit.cls_token + pos[:, :1]).expand(B, -1, -1)
    x = vit.norm(vit.blocks(vit.norm_pre(torch.cat([cls, x], dim=1))))
    y = dec["embed"](x)
    Dd = y.shape[-1]
    y_ = torch.cat([y[:, 1:], dec.mask_token.expand(B, N - keep_n, -1)], dim=1)
    y_ = torch.gather(y_, 1, restore[..., None].expand(-1, -1, Dd))
    y = torch.cat([y[:, :1], y_], dim=1) + dec.pos
    pred = dec["pred"](dec["norm"](dec["blocks"](y)))[:, 1:]
    mask = torch.ones(B, N, device=imgs.device)
    mask[:, :keep_n] = 0
    mask = torch.gather(mask, 1, restore)
    per_patch = ((pred - patchify(imgs, cfg.patch_size)) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def video_mae_loss(model, dec, imgs, cfg: PretrainConfig, gen, target=None, return_mask: bool = False):
    """The study's video MAE: the image repeated as `frames` frames, one token per tubelet, a random `mask_ratio`
    of the tokens hidden; the encoder sees the visible ones, the decoder predicts every tubelet, and the loss is the
    mean absolute error (L1) on the hidden tubelets only. `target` (default: the tubelets of the frames) can be
    given to check what the loss depends on."""
    import torch

    from embedsearch.models.video_vit import tubelets

    x = model.tokens(imgs)
    B, N, D = x.shape
    keep_n = max(1, int(round(N * (1 - cfg.mask_ratio))))
    shuffle = torch.rand(B, N, generator=gen, device=imgs.device).argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    x = model.encode(torch.gather(x, 1, shuffle[:, :keep_n, None].expand(-1, -1, D)))
    y = dec["embed"](x)
    Dd = y.shape[-1]
    y_ = torch.cat([y[:, 1:], dec.mask_token.expand(B, N - keep_n, -1)], dim=1)
    y_ = torch.gather(y_, 1, restore[..., None].expand(-1, -1, Dd))
    pred = dec["pred"](dec["norm"](dec["blocks"](torch.cat([y[:, :1], y_], dim=1) + dec.pos)))[:, 1:]
    mask = torch.ones(B, N, device=imgs.device)
    mask[:, :keep_n] = 0
    mask = torch.gather(mask, 1, restore)  # 1 = hidden
    if target is None:
        target = tubelets(model.video(imgs), cfg.tubelet, cfg.patch_size)
    per_token = (pred - target).abs().mean(-1)
    loss = (per_token * mask).sum() / mask.sum()
    return (loss, mask) if return_mask else loss


def infonce_loss(vit, v1, v2, temperature: float):
    """NT-Xent over 2B views: the normalized CLS tokens, cosine similarity / T, the other view is the positive."""
    import torch

    z = torch.nn.functional.normalize(torch.cat([vit.forward_features(v1)[:, 0], vit.forward_features(v2)[:, 0]]), dim=1)
    B = v1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-float("inf"))
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return torch.nn.functional.cross_entropy(sim, target)


# --------------------------------------------------------------------------------------------- data


def select_records(source, where: str | None):
    """Records of `source` matching a --where predicate over id, label, split, path and metadata columns (checked
    and run by the catalog's `select_ids`, as for every other --where)."""
    import duckdb
    import pyarrow as pa

    from embedsearch.store.catalog import select_ids

    if not where:
        return source.records
    meta_cols = sorted({k for r in source.records for k in r.meta})
    items = pa.table({"id": [r.id for r in source.records], "label": [r.label for r in source.records],
                      "split": [r.split for r in source.records], "path": [r.path for r in source.records],
                      **{c: [r.meta.get(c) for r in source.records] for c in meta_cols}})
    con = duckdb.connect()
    try:
        con.register("items", items)
        con.execute("SET enable_external_access = false")
        ids = {r[0] for r in select_ids(con, where)}
    finally:
        con.close()
    out = [r for r in source.records if r.id in ids]
    if not out:
        raise EmbedsearchError(f"--where {where!r} selects no items of {source.spec}")
    return out


def load_images(records, root, size: int):
    """The selection as one uint8 tensor (N, 3, size, size): small-image pretraining fits in memory (60,000 MNIST
    digits are 141 MB), and batches then cost no decoding. Unreadable images are skipped and counted."""
    import torch
    from torchvision.transforms import v2

    from embedsearch.sources.images import ImageLoadError, array_to_image, load_image

    resize = v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True)])
    out, skipped = [], 0
    for r in records:
        try:
            img = array_to_image(r.array) if r.array is not None else load_image(root / r.path, root)
        except ImageLoadError:
            skipped += 1
            continue
        out.append(resize(img))
    if skipped:
        log.warning("pretraining skips %d unreadable images", skipped)
    if not out:
        raise EmbedsearchError("no readable images to pretrain on")
    return torch.stack(out)


# --------------------------------------------------------------------------------------------- training


@dataclass
class PretrainResult:
    checkpoint: str
    config: dict
    epochs: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def pretrain(source, cfg: PretrainConfig, out: str | Path, *, resume: bool = False, device: str = "auto",
             progress: bool = True) -> PretrainResult:
    """Train on the --where selection of `source`; writes OUT.safetensors (encoder), OUT.json (config, history),
    OUT.state.pt (decoder + optimizer, for --resume) and OUT.loss.png."""
    import torch
    from tqdm import tqdm

    from embedsearch.models.runtime import resolve_device

    if cfg.method not in METHODS:
        raise ConfigError(f"unknown --method {cfg.method!r}: expected one of {', '.join(METHODS)}")
    out = Path(out).with_suffix("")
    records = select_records(source, cfg.where)
    first = next(r for r in records)
    data_size = first.array.shape[0] if first.array is not None else 32
    cfg = cfg.resolved(data_size)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    vit = make_vit(cfg).to(dev)
    dec = _build_mae_parts(cfg, vit).to(dev) if "mae" in cfg.method else None
    params = list(vit.parameters()) + (list(dec.parameters()) if dec is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    start = 0
    paths = ckpt_paths(out)
    two = "infonce" in cfg.method
    images = load_images(records, source.root, cfg.image_size).to(dev)
    n = len(images)
    g = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)
    mask_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    gens = {"order": g, "augment": aug_gen, "mask": mask_gen}
    if resume:
        start, losses = _resume(paths, cfg, vit, dec, opt, gens, dev)
        log.info("resuming %s at epoch %d of %d", out, start, cfg.epochs)
        _export(out, vit, cfg, start, losses, n)  # the state is the commit: the exported encoder follows it
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs  # drop the ragged last batch: InfoNCE needs same-size batches of negatives
    total = cfg.epochs * steps_per_epoch

    def lr_at(step):
        warm = cfg.warmup_epochs * steps_per_epoch
        if step < warm:
            return cfg.lr * (step + 1) / warm
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.epochs), desc=f"pretrain {cfg.method}", unit="epoch", disable=not progress,
               initial=start, total=cfg.epochs)
    vit.train()
    for epoch in bar:
        check_interrupt()  # a Ctrl-C swallowed during the imports
        run_loss, seen = 0.0, 0
        order = torch.randperm(n, generator=g).to(dev)
        for i in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i)
            x = images[order[i * bs:(i + 1) * bs]].float() / 255.0
            loss = 0.0
            if cfg.method == "video-mae":
                loss = video_mae_loss(vit, dec, normalize(x, cfg), cfg, mask_gen)
            elif "mae" in cfg.method:
                loss = loss + cfg.mae_weight * mae_loss(vit, dec, normalize(x, cfg), cfg, mask_gen)
            if two:
                v1 = normalize(random_views(x, cfg, aug_gen), cfg)
                v2 = normalize(random_views(x, cfg, aug_gen), cfg)
                loss = loss + cfg.infonce_weight * infonce_loss(vit, v1, v2, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item() * len(x)
            seen += len(x)
        losses.append(run_loss / max(seen, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        _save(out, vit, dec, opt, cfg, epoch + 1, losses, n, gens)
    bar.close()
    loss_png(losses, paths["png"], f"{cfg.method} pretraining loss")
    return PretrainResult(str(paths["weights"]), cfg.to_dict(), cfg.epochs, losses, time.perf_counter() - t0, n)


STATE_FORMAT = 2  # the state file holds everything a resume needs (encoder, decoder, optimizer, RNG, history)


def _config_record(cfg: PretrainConfig) -> dict:
    return {**cfg.to_dict(), "augment": list(cfg.augment), "mean": list(cfg.mean), "std": list(cfg.std)}


def _save(out, vit, dec, opt, cfg, epochs_done, losses, n_images, gens):
    """One commit per epoch: OUT.state.pt, renamed into place atomically, holds the whole training state (encoder,
    decoder, optimizer, every RNG, the loss history); a resume reads only it. OUT.safetensors and OUT.json, the
    encoder for `ckpt:`, are exported from the same state right after (and again by a resume), so a kill between
    the files can never pair newer weights with an older optimizer."""
    import torch

    p = ckpt_paths(out)
    p["state"].parent.mkdir(parents=True, exist_ok=True)
    state = {"format": STATE_FORMAT, "config": _config_record(cfg), "epochs_done": epochs_done, "losses": losses,
             "encoder": vit.state_dict(), "decoder": dec.state_dict() if dec is not None else {},
             "optimizer": opt.state_dict(), "rng": {k: v.get_state() for k, v in gens.items()},
             "torch_rng": torch.get_rng_state()}
    with atomic_path(p["state"]) as tmp:
        torch.save(state, tmp)
    crash_point("after-commit:pretrain-state")
    _export(out, vit, cfg, epochs_done, losses, n_images)


def _export(out, vit, cfg, epochs_done, losses, n_images):
    arch = ({"arch": "video ViT (tubelets)", "video": video_kwargs(cfg)} if cfg.method == "video-mae"
            else {"arch": "timm VisionTransformer", "vit": vit_kwargs(cfg)})
    meta = {**arch,
            "preprocess": {"input_size": [3, cfg.image_size, cfg.image_size], "interpolation": "bilinear (antialias)",
                           "mean": list(cfg.mean), "std": list(cfg.std)},
            "pretrain": _config_record(cfg), "epochs_done": epochs_done, "losses": losses, "n_images": n_images}
    save_checkpoint(out, vit.state_dict(), meta)


def _resume(paths, cfg, vit, dec, opt, gens, dev) -> tuple[int, list[float]]:
    """Restore everything from OUT.state.pt (weights, optimizer, RNG states): the resumed run is bit-identical to
    an uninterrupted one."""
    import torch

    if not paths["state"].exists():
        raise EmbedsearchError(f"--resume: no training state at {paths['state']}")
    try:
        state = torch.load(paths["state"], map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — a truncated or foreign file: one line
        raise EmbedsearchError(f"--resume: {paths['state']} is unreadable ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise EmbedsearchError(f"--resume: {paths['state']} was written by an older embedsearch (it lacks the RNG "
                               "state a faithful resume needs): start again without --resume")
    if state["config"] != _config_record(cfg):
        raise EmbedsearchError(f"--resume: {paths['state']} was trained with another configuration")
    vit.load_state_dict(state["encoder"])
    if dec is not None:
        dec.load_state_dict(state["decoder"])
    opt.load_state_dict(state["optimizer"])
    for k, gen in gens.items():
        gen.set_state(state["rng"][k])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epochs_done"]), list(state["losses"])


def loss_png(losses: list[float], path: Path, title: str, w: int = 640, h: int = 360) -> None:
    """A plain line chart of the loss per epoch (Pillow only)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pad = 50
    d.text((w // 2 - 80, 10), title, fill="black")
    d.line([(pad, h - pad), (w - pad, h - pad)], fill="gray")
    d.line([(pad, pad), (pad, h - pad)], fill="gray")
    if losses:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0
        pts = [(pad + i * (w - 2 * pad) / max(1, len(losses) - 1), h - pad - (v - lo) / span * (h - 2 * pad))
               for i, v in enumerate(losses)]
        if len(pts) > 1:
            d.line(pts, fill=(31, 119, 180), width=2)
        d.text((5, pad - 5), f"{hi:.4f}", fill="black")
        d.text((5, h - pad - 5), f"{lo:.4f}", fill="black")
        d.text((w - pad - 40, h - pad + 8), f"epoch {len(losses)}", fill="black")
    img.save(path)
