"""Trained probes saved with an index (safetensors + JSON, no pickles) and applied to new images by `classify`."""

from __future__ import annotations

import json
import time

import numpy as np

from embedsearch.core.errors import QueryError

PROBES = ("prototypes", "linear", "svc", "mlp")


def _paths(ix, method):
    d = ix.layout.dir / "probes"
    return d, d / f"{method}.safetensors", d / f"{method}.json"


def save_probe(ix, method: str, tensors: dict[str, np.ndarray], meta: dict) -> None:
    from safetensors.numpy import save_file

    from embedsearch.core.files import atomic_write_bytes

    d, st, js = _paths(ix, method)
    d.mkdir(exist_ok=True)
    tmp = st.with_name(f".{st.name}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    tmp.replace(st)
    atomic_write_bytes(js, json.dumps({**meta, "method": method, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                       "weights_sha256": ix.manifest["space"].get("weights_sha256")},
                                      indent=1, default=str).encode())


def probe_tensors(method: str, model) -> dict[str, np.ndarray] | None:
    """Turn what a protocol returned into plain arrays; None for models we do not persist (RBF SVC)."""
    if method == "prototypes":
        protos, has = model
        return {"prototypes": protos.astype(np.float32), "has": has.astype(np.uint8)}
    if method == "linear":
        W, b = model
        return {"W": W, "b": b}
    if method == "svc":
        scaler, clf = model
        if not hasattr(clf, "coef_"):
            return None  # RBF: its support vectors are tied to sklearn internals; classify uses LinearSVC
        return {"mean": scaler.mean_, "scale": scaler.scale_, "W": clf.coef_.T, "b": clf.intercept_,
                "classes": np.asarray(clf.classes_, np.int64)}
    if method == "mlp":
        net, mean, std = model
        sd = {k: v.numpy() for k, v in net.state_dict().items()}
        return {**{f"net.{k}": v for k, v in sd.items()}, "mean": mean, "std": std}
    return None


def load_probe(ix, method: str):
    from safetensors.numpy import load_file

    if method not in PROBES:
        raise QueryError(f"unknown probe {method!r}: expected one of {', '.join(PROBES)}")
    _, st, js = _paths(ix, method)
    if not st.exists():
        raise QueryError(f"index {ix.name} has no saved {method} probe: run `embedsearch eval {ix.name} "
                         f"--methods {method}` first")
    meta = json.loads(js.read_text())
    if meta.get("weights_sha256") != ix.manifest["space"].get("weights_sha256"):
        raise QueryError(f"the saved {method} probe was trained on another embedding space; re-run eval")
    return load_file(str(st)), meta


def probe_scores(method: str, t: dict, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) scores of a saved probe: cosine (prototypes), probabilities (linear, mlp), margins (svc)."""
    x = np.asarray(x, np.float64)
    if method == "prototypes":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        s = xn @ t["prototypes"].T.astype(np.float64)
        s[:, t["has"] == 0] = -np.inf
        return s
    if method == "linear":
        return _softmax(x @ t["W"] + t["b"])
    if method == "svc":
        out = np.full((len(x), n_classes), -np.inf)
        d = ((x - t["mean"]) / t["scale"]) @ t["W"] + t["b"]
        if d.shape[1] == 1:
            d = np.concatenate([-d, d], axis=1)
        out[:, t["classes"]] = d
        return out
    # mlp: Linear → ReLU → Linear, weights from the saved state dict
    h = ((x - t["mean"]) / t["std"]) @ t["net.0.weight"].T + t["net.0.bias"]
    return _softmax(np.maximum(h, 0) @ t["net.2.weight"].T + t["net.2.bias"])


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classify(ix, method: str, images, k: int = 3) -> list[dict]:
    """Top-k classes for each image with a saved probe; the images are embedded with the index's own backbone."""
    from embedsearch.query.search import query_vectors

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"-k must be a whole number of at least 1 (got {k!r})")
    t, meta = load_probe(ix, method)
    classes = ix.classes()
    descs, q = query_vectors(ix, images=images)
    s = probe_scores(method, t, q, len(classes))
    from embedsearch.core.results import Rows

    rows = Rows()
    for d, row in zip(descs, s):
        for rank, c in enumerate(np.argsort(-row, kind="stable")[:k], start=1):
            rows.append({"image": d["query"], "rank": rank, "label": classes[c], "score": round(float(row[c]), 6),
                         "probe": method, "trained_on": meta.get("train", {}).get("where"), "run_id": meta.get("run_id")})
    return rows
