"""Classifier metrics as docs/protocols.md defines them: top-k, balanced accuracy, P/R/F1, confusion, bootstrap CIs."""

from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 1000


TOPK_RULE = ("classes ranked by score, ties broken by class index; a class scored -inf (no train item, so it "
             "cannot be predicted) never counts as a hit")


def topk_correct(scores: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Whether the true class is among the k highest scores, per row (TOPK_RULE). The true class's rank is counted
    (classes scoring higher, plus those scoring the same with a lower index): what a stable sort of the scores
    would give, in O(classes) per row and without sorting."""
    k = min(k, scores.shape[1])
    s_true = scores[np.arange(len(y)), y][:, None]
    rank = (scores > s_true).sum(axis=1) + ((scores == s_true) & (np.arange(scores.shape[1]) < y[:, None])).sum(1)
    return (rank < k) & np.isfinite(s_true[:, 0])


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


CONFUSION_DENSE_MAX = 50  # classes in test up to which the full confusion matrix is stored (and drawn)
TOP_CONFUSIONS = 50  # the most frequent (true, predicted) pairs recorded beyond that


def predictions_of(scores: np.ndarray, y: np.ndarray, ks=(3, 5)) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(predicted class, {k: top-k hit}) of one block of score rows: what every metric is computed from, so the
    (n, classes) score matrix never has to exist whole (20,000 classes × 20,000 items would be 3.2 GB)."""
    hits = {k: topk_correct(scores, y, k) for k in ks if scores.shape[1] >= k}
    finite = np.isfinite(scores)
    pred = np.argmax(scores if finite.all() else np.where(finite, scores, -np.inf), axis=1)
    return pred, hits


def classification_report(y: np.ndarray, scores: np.ndarray, classes: list[str], seed: int = 0) -> dict:
    """Every metric of docs/protocols.md for one classifier. `scores` is (n, n_classes) over *all* catalog classes."""
    y = np.asarray(y, np.int64)
    assert scores.shape == (len(y), len(classes)), (scores.shape, len(y), len(classes))
    pred, hits = predictions_of(scores, y)
    return report_from_predictions(y, pred, hits, classes, seed)


def report_from_predictions(y: np.ndarray, pred: np.ndarray, hits: dict[int, np.ndarray], classes: list[str],
                            seed: int = 0) -> tuple[dict, np.ndarray]:
    """The metrics from predictions and top-k hits. Sizes grow linearly with the number of classes: the confusion
    is a full matrix up to CONFUSION_DENSE_MAX classes in test, beyond that its non-zero cells (at most one per
    test item) and the most frequent confusions."""
    from sklearn.metrics import precision_recall_fscore_support

    y = np.asarray(y, np.int64)
    C = len(classes)
    present = np.unique(y)
    out = {"n_test": int(len(y)), "n_classes": C, "n_classes_in_test": int(len(present)),
           "top1": float((pred == y).mean())}
    for k, h in sorted(hits.items()):
        out[f"top{k}"] = float(h.mean())
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
    out["confusion"] = confusion(y, pred, present)
    return out, pred


def confusion(y: np.ndarray, pred: np.ndarray, present: np.ndarray) -> dict:
    """Counts of (true, predicted) over the test items. Small label sets: the dense matrix over the classes present
    in test (rows true, columns predicted); large ones: the non-zero cells as [true, predicted, count] and the
    TOP_CONFUSIONS most frequent off-diagonal pairs. Computed without ever forming a dense matrix."""
    pairs, counts = np.unique(np.stack([y, pred], axis=1), axis=0, return_counts=True) if len(y) else (
        np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    if len(present) <= CONFUSION_DENSE_MAX:
        pos = {int(c): i for i, c in enumerate(present)}
        m = np.zeros((len(present), len(present)), np.int64)
        for (t, q), n in zip(pairs.tolist(), counts.tolist(), strict=True):
            if q in pos:  # a prediction outside the test's classes shows only in the row's shortfall
                m[pos[t], pos[q]] += n
        return {"labels": [int(c) for c in present], "matrix": m.tolist()}
    off = pairs[:, 0] != pairs[:, 1]
    order = np.argsort(-counts[off], kind="stable")[:TOP_CONFUSIONS]
    return {"labels": [int(c) for c in present], "format": "sparse",
            "cells": [[int(t), int(q), int(n)] for (t, q), n in zip(pairs.tolist(), counts.tolist(), strict=True)],
            "top_confusions": [[int(t), int(q), int(n)] for (t, q), n in
                               zip(pairs[off][order].tolist(), counts[off][order].tolist(), strict=True)],
            "note": f"{len(present)} classes in test: non-zero cells only (the dense matrix is kept up to "
                    f"{CONFUSION_DENSE_MAX} classes)"}
