"""Trained probes saved with an index (safetensors + JSON, no pickles) and applied to new images by `classify`.

A probe is a fitted variant's `tensors()`; loading gives back the same `Fitted` (evaluate/methods), so `classify`
scores with the code that produced the eval numbers.

probes/METHOD.* is the probe of the latest eval run of METHOD; a copy is kept per setting (probes/METHOD@KEY.*, the
eval reuse key, the newest KEEP_SETTINGS of each method), so a run that reuses an earlier setting's result puts that
setting's probe back instead of leaving another selection's in place."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields

import numpy as np

from embedsearch.core.errors import QueryError, first_line
from embedsearch.core.schema import from_record
from embedsearch.evaluate.methods import REGISTRY

PROBES = ("prototypes", "linear", "svc", "mlp")
KEEP_SETTINGS = 8  # per method, the probes of this many settings are kept for reuse (the newest)


@dataclass(frozen=True)
class ProbeRecord:
    """probes/METHOD.json, what `save_probe` writes beside the tensors: untrusted on the way back (an index may come
    from someone else), so read through `from_record`. Every field has a default: records of older versions lack
    some (the checksum before 2026-12), and the methods' `load` falls back for the rest. What it does not know is
    kept as written (`extra`)."""

    method: str | None = None
    run_id: str | None = None
    variant: str = ""
    params: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    seed: int = 0
    n_classes: int | None = None
    weights_sha256: str | None = None  # the embedding space it was trained in
    sha256: str | None = None  # of the .safetensors file
    saved: str | None = None
    setting_key: str | None = None  # the eval reuse key of the result it belongs to
    extra: dict = field(default_factory=dict)

    @classmethod
    def prepare_record(cls, d: dict, fail) -> dict:
        known = {f.name for f in fields(cls)} - {"extra"}
        return {**{k: v for k, v in d.items() if k in known}, "extra": {k: v for k, v in d.items() if k not in known}}


def _paths(ix, method, key: str | None = None):
    d = ix.layout.probes
    stem = method if key is None else f"{method}@{key}"
    return d, d / f"{stem}.safetensors", d / f"{stem}.json"


def save_probe(ix, method: str, tensors: dict[str, np.ndarray], meta: dict, key: str | None = None) -> None:
    """probes/METHOD.*, and with `key` (the eval reuse key of the result it belongs to) the same as
    probes/METHOD@KEY.* for a later run that reuses that result."""
    from safetensors.numpy import save_file

    from embedsearch.core.files import atomic_path, atomic_write_bytes, file_sha256

    d, st, js = _paths(ix, method)
    d.mkdir(exist_ok=True)
    with atomic_path(st) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        sha = file_sha256(tmp)
    record = json.dumps({**meta, "method": method, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "weights_sha256": ix.manifest.space.weights_sha256, "sha256": sha, "setting_key": key},
                        indent=1, default=str).encode()
    atomic_write_bytes(js, record)
    if key is not None:
        _, kst, kjs = _paths(ix, method, key)
        atomic_write_bytes(kst, st.read_bytes())
        atomic_write_bytes(kjs, record)
        kept = sorted(d.glob(f"{method}@*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP_SETTINGS:]:
            old.with_suffix(".safetensors").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


def has_probe(ix, method: str, key: str) -> bool:
    """Whether the probe saved for this setting is still there (plain files, not links)."""
    _, st, js = _paths(ix, method, key)
    return all(p.is_file() and not p.is_symlink() for p in (st, js))


def restore_probe(ix, method: str, key: str) -> None:
    """Make the probe saved for setting `key` the method's current one (a reused eval result brings its own)."""
    import os

    from embedsearch.core.files import atomic_write_bytes

    _, st, js = _paths(ix, method)
    _, kst, kjs = _paths(ix, method, key)
    os.utime(kjs, follow_symlinks=False)  # used again: the newest, for the pruning in save_probe
    if (st.is_file() and js.is_file() and not st.is_symlink() and not js.is_symlink()
            and js.read_bytes() == kjs.read_bytes() and st.read_bytes() == kst.read_bytes()):
        return  # already the current one
    atomic_write_bytes(st, kst.read_bytes())
    atomic_write_bytes(js, kjs.read_bytes())


def drop_probe(ix, method: str) -> None:
    """Remove the method's current probe: the latest run has no result it belongs to (skipped, or a variant that
    is not saved), and `classify` must not apply an older selection's."""
    _, st, js = _paths(ix, method)
    for p in (st, js):  # the tensors first: a reader in between is told there is no probe, not a damaged one
        if p.exists() or p.is_symlink():
            p.unlink()


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
        raise QueryError(f"probe record {js} is unreadable ({first_line(e)}); {rerun}") from None
    if not isinstance(meta, dict):
        raise QueryError(f"probe record {js} is not a JSON object; {rerun}")
    try:
        rec = from_record(ProbeRecord, meta, "", QueryError, source=js, what="probe record")
    except QueryError as e:
        raise QueryError(f"{e}; {rerun}") from None
    if rec.weights_sha256 != ix.manifest.space.weights_sha256:
        raise QueryError(f"the saved {method} probe was trained on another embedding space; {rerun}")
    from embedsearch.core.files import file_sha256

    if rec.sha256 is not None and rec.sha256 != file_sha256(st):  # probes saved before 2026-12 carry none
        raise QueryError(f"probe {st} does not match the checksum in {js.name} (changed or truncated); {rerun}")
    try:
        t = load_file(str(st))
    except Exception as e:  # noqa: BLE001 — safetensors raises its own error types for a damaged file
        raise QueryError(f"probe {st} is unreadable ({first_line(e)}); {rerun}") from None
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
