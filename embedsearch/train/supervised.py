"""Supervised baselines: the homework's small CNNs (or a small ViT) trained on the labels of the train selection,
epochs chosen by early stopping on a seeded held-out part of train (never on test), indexed through `ckpt:`.

Training augments (random resized crop + small affine by default; `flip` for natural images); evaluation and the
exported backbone never do (the homework augmented its test set too: a bug). Each epoch commits one state file
(model, optimizer, RNGs, history, best weights); `--resume` continues bit for bit. The exported checkpoint holds the
best held-out epoch's weights, and `ckpt:` embeds its penultimate features (the classifier's input).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from embedsearch.core.errors import ConfigError, EmbedsearchError, first_line
from embedsearch.core.files import atomic_path, crash_point
from embedsearch.core.progress import check_interrupt
from embedsearch.models.checkpoint import ckpt_paths, save_checkpoint
from embedsearch.models.cnn import ARCHS

log = logging.getLogger(__name__)

SUPERVISED_ARCHS = (*ARCHS, "vit")
STATE_FORMAT = 1


@dataclass(frozen=True)
class SupervisedConfig:
    arch: str = "cnn-deep"
    epochs: int = 30  # at most; early stopping usually ends sooner
    patience: int = 5  # epochs without a better held-out accuracy before stopping
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    augment: tuple[str, ...] = ("crop", "affine")
    image_size: int = 0  # 0: from the data
    patch_size: int = 0  # vit only
    depth: int = 4
    width: int = 0
    heads: int = 4
    seed: int = 0
    where: str | None = "split = 'train'"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.arch not in SUPERVISED_ARCHS:
            raise ConfigError(f"unknown --arch {self.arch!r}: expected one of {', '.join(SUPERVISED_ARCHS)}")
        for name, ok, want in (("epochs", self.epochs >= 1, "at least 1"), ("patience", self.patience >= 1,
                                                                           "at least 1"),
                               ("batch_size", self.batch_size >= 1, "at least 1"),
                               ("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number above 0")):
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')} must be {want} (got {getattr(self, name)})")

    def record(self) -> dict:
        return {**asdict(self), "augment": list(self.augment), "mean": list(self.mean), "std": list(self.std),
                "method": "supervised"}


@dataclass
class SupervisedResult:
    checkpoint: str
    config: dict
    epochs: int
    best_epoch: int
    heldout_accuracy: list[float]
    losses: list[float]
    seconds: float
    n_train: int
    n_heldout: int

    def to_dict(self) -> dict:
        return asdict(self)


def _model(cfg: SupervisedConfig, n_classes: int):
    if cfg.arch == "vit":
        from timm.models.vision_transformer import VisionTransformer

        from embedsearch.train.pretrain import vit_kwargs

        return VisionTransformer(**{**vit_kwargs(cfg), "num_classes": n_classes})
    from embedsearch.models.cnn import make_cnn

    return make_cnn(cfg.arch, n_classes)


def _resolved(cfg: SupervisedConfig, data_size: int) -> SupervisedConfig:
    size = cfg.image_size or data_size
    if cfg.arch != "vit":
        return replace(cfg, image_size=size)
    patch = cfg.patch_size or max(2, size // 4)
    if size % patch:
        raise ConfigError(f"--patch-size {patch} does not divide --image-size {size}")
    width = cfg.width or (64 if size <= 16 else 128)
    return replace(cfg, image_size=size, patch_size=patch, width=width)


def train_supervised(source, cfg: SupervisedConfig, out: str | Path, *, resume: bool = False, device: str = "auto",
                     progress: bool = True) -> SupervisedResult:
    """Train on the labelled `--where` selection of `source`; writes OUT.safetensors + OUT.json (the best held-out
    epoch, for `ckpt:`), OUT.state.pt (for --resume) and OUT.loss.png (loss and held-out accuracy per epoch)."""
    import torch
    from tqdm import tqdm

    from embedsearch.evaluate.methods.base import heldout
    from embedsearch.models.runtime import resolve_device
    from embedsearch.train.pretrain import load_images, normalize, random_views, select_records

    out = Path(out).with_suffix("")
    records = [r for r in select_records(source, cfg.where) if r.label is not None]
    if len(records) < 4:
        raise EmbedsearchError(f"--method supervised needs labelled items: --where {cfg.where!r} selects "
                               f"{len(records)}")
    classes = sorted({r.label for r in records})
    if len(classes) < 2:
        raise EmbedsearchError(f"--method supervised needs at least 2 classes; the selection has {classes}")
    first = records[0]
    cfg = _resolved(cfg, first.array.shape[0] if first.array is not None else 32)
    y_all = np.asarray([classes.index(r.label) for r in records], np.int64)
    fit, held, split = heldout(y_all, cfg.seed, "supervised training")
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = _model(cfg, len(classes)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    images = load_images(records, source.root, cfg.image_size).to(dev)
    if len(images) != len(records):
        raise EmbedsearchError("some selected images are unreadable: fix or exclude them with --where")
    Y = torch.from_numpy(y_all).to(dev)
    fit_t, held_t = torch.from_numpy(fit).to(dev), torch.from_numpy(held).to(dev)
    gens = {"order": torch.Generator().manual_seed(cfg.seed),
            "augment": torch.Generator(device=dev).manual_seed(cfg.seed + 2)}
    hist = {"losses": [], "heldout": [], "best": -1.0, "best_epoch": 0, "best_weights": None, "bad": 0}
    start = 0
    paths = ckpt_paths(out)
    if resume:
        start = _resume(paths, cfg, model, opt, gens, hist)
        log.info("resuming %s at epoch %d", out, start)
    bs = min(cfg.batch_size, len(fit))
    steps = max(1, len(fit) // bs)
    total = cfg.epochs * steps

    def lr_at(step):
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))

    def held_accuracy() -> float:
        model.eval()
        with torch.inference_mode():
            correct = 0
            for a in range(0, len(held_t), 512):
                idx = held_t[a:a + 512]
                x = normalize(images[idx].float() / 255.0, cfg)  # no augmentation when evaluating
                correct += int((model(x).argmax(1) == Y[idx]).sum())
        model.train()
        return correct / len(held_t)

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.epochs), desc=f"train {cfg.arch}", unit="epoch", disable=not progress,
               initial=start, total=cfg.epochs)
    model.train()
    for epoch in bar:
        check_interrupt()  # a Ctrl-C swallowed during the imports
        if hist["bad"] >= cfg.patience:
            break
        order = fit_t[torch.randperm(len(fit_t), generator=gens["order"]).to(dev)]
        run_loss, seen = 0.0, 0
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + i)
            idx = order[i * bs:(i + 1) * bs]
            x = normalize(random_views(images[idx].float() / 255.0, cfg, gens["augment"]), cfg)
            loss = torch.nn.functional.cross_entropy(model(x), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item() * len(idx)
            seen += len(idx)
        acc = held_accuracy()
        hist["losses"].append(run_loss / max(seen, 1))
        hist["heldout"].append(acc)
        if acc > hist["best"]:
            hist.update(best=acc, best_epoch=epoch + 1, bad=0,
                        best_weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            hist["bad"] += 1
        bar.set_postfix_str(f"loss {hist['losses'][-1]:.4f}, held-out {acc:.4f} (best {hist['best']:.4f} at "
                            f"epoch {hist['best_epoch']})")
        _save(out, model, opt, cfg, epoch + 1, gens, hist, classes, split, len(fit), len(held))
    bar.close()
    _curves_png(hist, paths["png"], f"supervised {cfg.arch}")
    return SupervisedResult(str(paths["weights"]), cfg.record(), len(hist["losses"]), hist["best_epoch"],
                            hist["heldout"], hist["losses"], time.perf_counter() - t0, len(fit), len(held))


def _save(out, model, opt, cfg, epochs_done, gens, hist, classes, split, n_fit, n_held):
    """One commit per epoch (the state file, renamed into place), then the export of the best weights from it."""
    import torch

    p = ckpt_paths(out)
    p["state"].parent.mkdir(parents=True, exist_ok=True)
    state = {"format": STATE_FORMAT, "config": cfg.record(), "epochs_done": epochs_done,
             "model": model.state_dict(), "optimizer": opt.state_dict(),
             "rng": {k: v.get_state() for k, v in gens.items()}, "torch_rng": torch.get_rng_state(),
             "history": {k: v for k, v in hist.items()}}
    with atomic_path(p["state"]) as tmp:
        torch.save(state, tmp)
    crash_point("after-commit:supervised-state")
    _export(out, cfg, hist, classes, split, n_fit, n_held, epochs_done)


def _export(out, cfg, hist, classes, split, n_fit, n_held, epochs_done):
    from embedsearch.train.pretrain import vit_kwargs

    weights = {k: v for k, v in hist["best_weights"].items()
               if not (cfg.arch == "vit" and k.startswith("head."))}  # the ViT exported without its classifier
    arch = ({"arch": "timm VisionTransformer", "vit": vit_kwargs(cfg)} if cfg.arch == "vit"
            else {"arch": cfg.arch, "cnn": {"arch": cfg.arch, "n_classes": len(classes)}})
    meta = {**arch, "preprocess": {"input_size": [3, cfg.image_size, cfg.image_size],
                                   "interpolation": "bilinear (antialias)", "mean": list(cfg.mean),
                                   "std": list(cfg.std)},
            "pretrain": {**cfg.record(), "heldout": split["selection"], "n_fit": n_fit, "n_heldout": n_held},
            "classes": classes, "epochs_done": epochs_done, "best_epoch": hist["best_epoch"],
            "losses": hist["losses"], "heldout_accuracy": hist["heldout"], "n_images": n_fit + n_held}
    save_checkpoint(out, weights, meta)


def _resume(paths, cfg, model, opt, gens, hist) -> int:
    import torch

    if not paths["state"].exists():
        raise EmbedsearchError(f"--resume: no training state at {paths['state']}")
    try:
        state = torch.load(paths["state"], map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — a truncated or foreign file: one line
        raise EmbedsearchError(f"--resume: {paths['state']} is unreadable ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "history" not in state:
        raise EmbedsearchError(f"--resume: {paths['state']} is not a supervised training state")
    if state["config"] != cfg.record():
        raise EmbedsearchError(f"--resume: {paths['state']} was trained with another configuration")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for k, g in gens.items():
        g.set_state(state["rng"][k])
    torch.set_rng_state(state["torch_rng"])
    hist.update(state["history"])
    return int(state["epochs_done"])


def _curves_png(hist: dict, path: Path, title: str) -> None:
    from embedsearch.train.pretrain import loss_png

    loss_png(hist["losses"], path, f"{title}: loss per epoch (best held-out {hist['best']:.4f} at epoch "
                                   f"{hist['best_epoch']})")
