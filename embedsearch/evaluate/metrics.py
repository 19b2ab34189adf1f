"""Classifier metrics as docs/protocols.md defines them: top-k, balanced accuracy, P/R/F1, confusion, bootstrap CIs."""

from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 1000


TOPK_RULE = ("classes ranked by score, ties broken by class index; a class scored -inf (no train item, so it "
             "cannot be predicted) never counts as a hit")


def topk_correct(scores: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Whether the true class is among the k highest scores, per row (TOPK_RULE)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == y[:, None]).any(axis=1) & np.isfinite(scores[np.arange(len(y)), y])


def per_class_recall(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    support = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / support, support


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean per-class recall over the classes present in `y` (not plain accuracy)."""
    recall, support = per_class_recall(y, pred, n_classes)
    return float(recall[support > 0].mean())


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, n_classes: int, seed: int, n: int = N_BOOTSTRAP) -> dict:
    """95 % percentile intervals for top-1 and balanced accuracy from `n` seeded resamples of the test set."""
    rng = np.random.default_rng(seed)
    correct = pred == y
    top1, bal = np.empty(n), np.empty(n)
    for b in range(n):
        idx = rng.integers(0, len(y), len(y))
        top1[b] = correct[idx].mean()
        yb = y[idx]
        support = np.bincount(yb, minlength=n_classes)
        hits = np.bincount(yb[correct[idx]], minlength=n_classes)
        present = support > 0
        bal[b] = (hits[present] / support[present]).mean()
    return {"top1": [float(np.percentile(top1, 2.5)), float(np.percentile(top1, 97.5))],
            "balanced_accuracy": [float(np.percentile(bal, 2.5)), float(np.percentile(bal, 97.5))],
            "method": f"percentile bootstrap, {n} resamples of the test set, seed {seed}"}


def classification_report(y: np.ndarray, scores: np.ndarray, classes: list[str], seed: int = 0) -> dict:
    """Every metric of docs/protocols.md for one classifier. `scores` is (n, n_classes) over *all* catalog classes."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = np.asarray(y, np.int64)
    C = len(classes)
    assert scores.shape == (len(y), C), (scores.shape, len(y), C)
    pred = np.argmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1)
    present = np.unique(y)
    out = {"n_test": int(len(y)), "n_classes": C, "n_classes_in_test": int(len(present)),
           "top1": float((pred == y).mean())}
    for k in (3, 5):
        if C >= k:
            out[f"top{k}"] = float(topk_correct(scores, y, k).mean())
    out["topk_rule"] = TOPK_RULE
    out["balanced_accuracy"] = balanced_accuracy(y, pred, C)
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=present, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    out["averaging"] = "macro/weighted over the classes present in the test selection; zero_division=0"
    out["ci95"] = bootstrap_ci(y, pred, C, seed)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=np.arange(C), zero_division=0)
    out["per_class"] = [{"class_index": i, "class": classes[i], "support": int(s[i]), "precision": float(p[i]),
                         "recall": float(r[i]), "f1": float(f[i])} for i in range(C) if s[i] > 0]
    out["confusion"] = {"labels": [int(c) for c in present],
                        "matrix": confusion_matrix(y, pred, labels=present).tolist()}
    return out, pred
