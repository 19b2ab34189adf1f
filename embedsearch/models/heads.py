"""What a backbone itself says: its own classifier head (timm, torchvision, transformers), top-k labels with
probabilities and class names, for images from anywhere (`embedsearch classify --head`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedsearch.core.errors import BackboneError, SpecError
from embedsearch.models.backbones import hub_load, offline_error, refuse_download
from embedsearch.models.checkpoint import apply_state_dict, load_state_dict
from embedsearch.models.specs import parse_backbone


@dataclass
class Head:
    spec: str
    model: Any
    preprocess: Callable
    labels: list[str]
    weights: str

    def logits(self, x):
        out = self.model(x)
        return getattr(out, "logits", out)


def create_head(spec: str, *, weights: str | None = None, pretrained: bool = True, device: str = "cpu") -> Head:
    """The backbone of `spec` with its classifier kept, and the names of its classes."""
    s = parse_backbone(spec)
    use_pretrained = pretrained and weights is None
    if s.kind == "timm":
        import timm
        from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_model_data_config

        model = hub_load(s, use_pretrained, lambda: timm.create_model(s.name, pretrained=use_pretrained),
                         f"timm model {s.name}")
        n = getattr(model, "num_classes", 0)
        if not n:
            raise SpecError(f"--head: {spec} has no classifier")
        subset = infer_imagenet_subset(model)
        info = ImageNetInfo(subset) if subset else None
        labels = [info.index_to_description(i) for i in range(n)] if info else [str(i) for i in range(n)]
        pre = create_transform(**resolve_model_data_config(model), is_training=False)
    elif s.kind == "torchvision":
        from torchvision import models as tvm

        enum = tvm.get_model_weights(s.name)
        wenum = enum[s.entry] if s.entry else enum.DEFAULT
        if use_pretrained:
            refuse_download(s, wenum)
        try:
            model = tvm.get_model(s.name, weights=wenum if use_pretrained else None)
        except Exception as e:  # noqa: BLE001
            if use_pretrained:
                raise offline_error(s, e, "put the file in the torch.hub cache") from None
            raise BackboneError(f"cannot create torchvision model {s.name}: {e}") from None
        labels = list(wenum.meta.get("categories") or [])
        pre = wenum.transforms()
    elif s.kind == "hf":
        try:
            import transformers
        except ImportError:
            raise BackboneError("hf: backbones need transformers: pip install 'embedsearch[hf]'") from None
        try:
            if use_pretrained:
                model = transformers.AutoModelForImageClassification.from_pretrained(s.name)
            else:
                model = transformers.AutoModelForImageClassification.from_config(
                    transformers.AutoConfig.from_pretrained(s.name))
            processor = transformers.AutoImageProcessor.from_pretrained(s.name)
        except Exception as e:  # noqa: BLE001
            if not Path(s.name).is_dir():
                raise offline_error(s, e, "set HF_HUB_CACHE to a cache that has them, or pass hf:LOCAL_DIR") from None
            raise SpecError(f"--head: {spec} has no image-classification head ({type(e).__name__})") from None
        id2label = model.config.id2label or {}
        labels = [id2label.get(i, str(i)) for i in range(model.config.num_labels)]

        def pre(img):
            return processor(images=img, return_tensors="pt")["pixel_values"][0]
    else:
        raise SpecError(f"--head needs a timm, torchvision or hf: backbone with a classifier; {spec} has none")
    if weights:
        apply_state_dict(model, load_state_dict(weights), str(weights))
    if not labels:
        raise SpecError(f"--head: {spec} has no classifier")
    model.eval().to(device)
    return Head(spec, model, pre, labels,
                str(weights) if weights else ("pretrained" if use_pretrained else "random-init"))


def head_topk(head: Head, images, k: int = 5) -> list[dict]:
    """Top-k classes of the backbone's own classifier per image: label, probability (softmax of its logits)."""
    import torch

    from embedsearch.sources.images import ImageLoadError, load_image

    dev = next(head.model.parameters()).device
    rows = []
    for f in images:
        try:
            x = head.preprocess(load_image(f)).unsqueeze(0).to(dev)
        except ImageLoadError as e:
            raise BackboneError(f"image {e}") from None
        with torch.inference_mode():
            p = torch.softmax(head.logits(x).float(), dim=-1)[0]
        top = torch.topk(p, min(k, len(p)))
        for rank, (prob, c) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
            rows.append({"image": str(f), "rank": rank, "class_index": c, "label": head.labels[c],
                         "probability": round(prob, 6), "backbone": head.spec, "weights": head.weights})
    return rows

