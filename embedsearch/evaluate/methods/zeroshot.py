"""CLIP zero-shot with text prompts (CLIP_benchmark / open_clip): prompt-ensembled class vectors, logits = 100·cos."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate.methods.base import Fitted, Method, register

# CLIP's CIFAR-10/100 templates (18), as in CLIP_benchmark
CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
    "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
    "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
]
GENERIC_TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "an image of a {}."]


def templates_for(source_kind: str) -> tuple[str, list[str]]:
    if source_kind in ("cifar10", "cifar100"):
        return "cifar (18 CLIP templates)", CIFAR_TEMPLATES
    return "generic (4 templates)", GENERIC_TEMPLATES


def read_prompt_file(path: str, classes: list[str]) -> tuple[list[str], list[str] | None]:
    """JSON {"classnames": {label: name} | [names in class order], "templates": ["a photo of a {}.", …]}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"prompt file {path}: {e}") from None
    names = data.get("classnames")
    if isinstance(names, dict):
        names = [names.get(c, c) for c in classes]
    elif isinstance(names, list):
        if len(names) != len(classes):
            raise EvalError(f"prompt file {path}: {len(names)} classnames for {len(classes)} classes")
    else:
        names = list(classes)
    templates = data.get("templates")
    if templates is not None and (not templates or not all("{}" in t for t in templates)):
        raise EvalError(f"prompt file {path}: every template needs a '{{}}' placeholder")
    return names, templates


def class_vectors(text_fn, names: list[str], templates: list[str]) -> np.ndarray:
    """class vector = normalize(mean over templates of normalize(encode_text(template.format(name))))."""
    import torch

    out = []
    with torch.inference_mode():
        for n in names:
            e = text_fn([t.format(n) for t in templates]).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            out.append((m / m.norm()).cpu().numpy())
    return np.stack(out)


def zeroshot_scores(class_vecs: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 100.0 * l2_normalize(q) @ class_vecs.T


@dataclass
class ZeroshotFitted(Fitted):
    class_vecs: np.ndarray = None

    def scores(self, x, ids=None):
        return zeroshot_scores(self.class_vecs, x)


@register
class Zeroshot(Method):
    """Uses no train item: each class is the text tower's vector of its prompts."""

    name = "zeroshot"
    order = 60
    needs = "text"

    def estimate(self, shape, rates, ctx):
        return 2 * shape.m * shape.d * shape.C / rates.flops + 0.05 * shape.C  # scores + the text tower per class

    def fit(self, train, ctx):
        ix = ctx.ix
        classes = ix.classes()
        names, templates = read_prompt_file(ctx.prompts, classes) if ctx.prompts else (classes, None)
        tname, default_t = templates_for(ix.manifest.source.get("kind", ""))
        templates = templates or default_t
        cv = class_vectors(ix.backbone().text, names, templates)
        return [ZeroshotFitted(self.name, "CLIP text prompts",
                               {"templates": len(templates), "template_set": "user file" if ctx.prompts else tname,
                                "logit_scale": 100,
                                "classnames": "user file" if ctx.prompts else "catalog class names"},
                               uses_train=False, class_vecs=cv)]
