"""Trained probes saved with an index (safetensors + JSON, no pickles) and applied to new images by `classify`.

A probe is a fitted variant's `tensors()`; loading gives back the same `Fitted` (evaluate/methods), so `classify`
scores with the code that produced the eval numbers."""

from __future__ import annotations

import json
import time

import numpy as np

from embedsearch.core.errors import QueryError
from embedsearch.evaluate.methods import REGISTRY

PROBES = ("prototypes", "linear", "svc", "mlp")


def _paths(ix, method):
    d = ix.layout.probes
    return d, d / f"{method}.safetensors", d / f"{method}.json"


def save_probe(ix, method: str, tensors: dict[str, np.ndarray], meta: dict) -> None:
    from safetensors.numpy import save_file

    from embedsearch.core.files import atomic_path, atomic_write_bytes, file_sha256

    d, st, js = _paths(ix, method)
    d.mkdir(exist_ok=True)
    with atomic_path(st) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        sha = file_sha256(tmp)
    atomic_write_bytes(js, json.dumps({**meta, "method": method, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "weights_sha256": ix.manifest.space.weights_sha256, "sha256": sha},
                                      indent=1, default=str).encode())


def load_probe(ix, method: str):
    from safetensors.numpy import load_file

    if method not in PROBES:
        raise QueryError(f"unknown probe {method!r}: expected one of {', '.join(PROBES)}")
    _, st, js = _paths(ix, method)
    if not st.exists():
        raise QueryError(f"index {ix.name} has no saved {method} probe: run `embedsearch eval {ix.name} "
                         f"--methods {method}` first")
    rerun = f"re-run `embedsearch eval {ix.name} --methods {method}`"
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        raise QueryError(f"probe record {js} is unreadable ({str(e)[:80]}); {rerun}") from None
    if not isinstance(meta, dict):
        raise QueryError(f"probe record {js} is not a JSON object; {rerun}")
    if meta.get("weights_sha256") != ix.manifest.space.weights_sha256:
        raise QueryError(f"the saved {method} probe was trained on another embedding space; {rerun}")
    from embedsearch.core.files import file_sha256

    if "sha256" in meta and meta["sha256"] != file_sha256(st):  # probes saved before 2026-12 carry no checksum
        raise QueryError(f"probe {st} does not match the checksum in {js.name} (changed or truncated); {rerun}")
    try:
        t = load_file(str(st))
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error types for a damaged file
        raise QueryError(f"probe {st} is unreadable ({str(e).splitlines()[0][:80]}); {rerun}") from None
    n_classes = len(ix.classes())
    why = _check_shapes(REGISTRY[method].shapes(t, ix.dim, n_classes), t, n_classes)
    if why:
        raise QueryError(f"probe {st}: {why}; {rerun}")
    return REGISTRY[method].load(t, {**meta, "n_classes": n_classes}), meta


def _check_shapes(want: dict[str, tuple], t: dict, n_classes: int) -> str | None:
    """What is wrong with a probe's tensors (None: nothing): a missing tensor, a shape that does not fit the index,
    a NaN/Inf, a class index out of range."""
    for name, shape in want.items():
        have = tuple(t[name].shape) if name in t else None
        if have != shape:
            return f"tensor {name} has shape {have}, expected {shape}"
        if t[name].dtype.kind == "f" and not np.isfinite(t[name]).all():
            return f"tensor {name} holds NaN/Inf"
    if "classes" in t and len(t["classes"]) and not (0 <= t["classes"].min() and t["classes"].max() < n_classes):
        return "tensor classes holds a class index out of range"
    return None


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(ix, method: str, images, k: int = 3) -> list[dict]:
    """Top-k classes for each image with a saved probe; the images are embedded with the index's own backbone."""
    from embedsearch.query.search import query_vectors

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"-k must be a whole number of at least 1 (got {k!r})")
    fitted, meta = load_probe(ix, method)
    classes = ix.classes()
    descs, q = query_vectors(ix, images=images)
    s = fitted.scores(q)  # the code that scored the eval run
    if fitted.probabilities:
        s = _softmax(s)
    from embedsearch.core.results import Rows

    rows = Rows()
    for d, row in zip(descs, s):
        for rank, c in enumerate(np.argsort(-row, kind="stable")[:k], start=1):
            rows.append({"image": d["query"], "rank": rank, "label": classes[c], "score": round(float(row[c]), 6),
                         "probe": method, "trained_on": meta.get("train", {}).get("where"), "run_id": meta.get("run_id")})
    return rows
