"""Likely label errors from out-of-fold predictions: a ranking (1 − p(given label)) and a decision (how many labels
are probably wrong, and which).

Every item is scored by models that never saw its label: seeded stratified folds, and for each fold a kNN vote
and/or a linear probe fitted on the other folds, their probabilities averaged (`out_of_fold`). The decision
(`flag_label_issues`) is confident learning (Northcutt et al., 2021) in our own formulation: per-class confidence
thresholds, a confident joint of (given, confident) classes calibrated to the given class counts, its off-diagonal
mass per class as the estimated number of wrong labels in that class, and that many of the class's least
self-confident items flagged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embedsearch.core import progress
from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate.computed import load, store_columns
from embedsearch.query.exact import Bank, topk

log = logging.getLogger(__name__)

# Rows of the first fold's training part the linear probe's C is chosen on (fit 90 %, held-out 10 %): the
# sweep fits ~12 values of C, the folds then one each, so on large selections the sweep would cost more than
# all the folds. C is sklearn's (C·Σ CE + ½‖W‖²: a prior of fixed strength, the same for any number of rows),
# so it carries over; on CIFAR-10 ResNet-20 features the held-out log-loss is flat within 1 % over two decades
# of C around the best, and the out-of-fold AUROC moved by 0.0008 between C = 0.03 and C = 1 (measured).
C_SWEEP_ROWS = 10_000
# Gradient tolerance of the fold fits and the sweep (float32): the held-out log-loss agrees to 1e-4 with fits
# at 1e-6 in float64 (measured on CIFAR-10 ResNet-20 features, 40k × 64), in half the iterations.
FOLD_TOL = 1e-4
# Bytes of one block of rows in the CPU loss/gradient pass (`fit_l2`): the probe's 512 rows are 4 MB at
# 2,048-d, but 128 kB at 64-d, where the per-block overhead made a fit 3× slower than with 4 MB blocks
# (measured, 40k × 64).
BLOCK_BYTES = 4 << 20


def block_rows(d: int) -> int:
    """Rows per block of the CPU pass for d-dimensional float32 rows: BLOCK_BYTES, at least the probe's own."""
    from embedsearch.evaluate.methods.linear import FUSED_ROWS

    return max(FUSED_ROWS, BLOCK_BYTES // (4 * max(d, 1)))


@dataclass
class OutOfFold:
    probs: np.ndarray  # (n, classes): each row predicted by models that never saw that item's label
    folds: np.ndarray  # fold of each item
    params: dict


def stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per item: within each class a seeded permutation, dealt round-robin (every fold gets its share
    of every class with enough items)."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        folds[rng.permutation(pos)] = (np.arange(len(pos)) + offset) % n_folds
        offset += len(pos)  # classes smaller than n_folds do not all land in fold 0
    return folds


def choose_C(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0, rows: int = C_SWEEP_ROWS,
             device: str = "cpu") -> tuple[float, dict]:
    """The linear probe's C by held-out log-loss (`linear_probe`'s sweep, criterion "log_loss"), on a seeded
    stratified sample of at most `rows` of (x, y), without the refit. Returns (C, a record of how)."""
    import torch

    from embedsearch.core.vectors import to_float32
    from embedsearch.evaluate.methods.base import heldout
    from embedsearch.evaluate.methods.linear import LINEAR_C_GRID, Preconditioned, fit_logreg

    pick = np.arange(len(y))
    if len(y) > rows:  # every class keeps its share (at least one item each)
        rng = np.random.default_rng(seed)
        keep = []
        for c in np.unique(y):
            pos = np.flatnonzero(y == c)
            keep.append(rng.choice(pos, max(1, round(len(pos) * rows / len(y))), replace=False))
        pick = np.sort(np.concatenate(keep))
    xs, ys = x[pick], y[pick]
    fit, held, split = heldout(ys, seed, "label issues: linear probe")
    pre = Preconditioned(xs[fit], device, torch.float32)
    Y = torch.from_numpy(np.asarray(ys[fit], np.int64)).to(device)
    x_held = torch.from_numpy(to_float32(xs[held])).to(device)
    y_held = torch.from_numpy(np.asarray(ys[held], np.int64)).to(device)
    grid = LINEAR_C_GRID
    rows_per_block = block_rows(x.shape[1])
    loss: dict[int, float] = {}

    def score(i, init=None):
        W, b, _ = fit_logreg(pre, Y, n_classes, float(grid[i]), init, tol=FOLD_TOL, block_rows=rows_per_block)
        loss[i] = float(torch.nn.functional.cross_entropy((x_held @ W + b).double(), y_held))
        return W, b

    init, worse = None, 0
    for i in range(0, len(grid), 4):  # one value a decade, increasing: warm starts from the more regularized fit
        init = score(i, init)
        worse = worse + 1 if loss[i] > min(loss.values()) else 0
        if worse == 2:  # held-out log-loss rose for two decades: larger C only overfits more
            break
    best = min(loss, key=lambda i: (loss[i], i))
    for i in range(max(0, best - 2), min(len(grid), best + 3)):  # ± half a decade, a quarter-decade apart
        if i not in loss:
            score(i)
    best = min(loss, key=lambda i: (loss[i], i))  # ties: the stronger regularization
    return float(grid[best]), {
        "C_criterion": "held-out log-loss", "C_rows": int(len(pick)), **split,
        "selection": f"held-out 10 % of each class of those rows, stratified, seed {seed} ({len(held)} items); "
                     "every fold then fitted at that C",
        "C_tried": {f"{grid[i]:.3g}": round(v, 5) for i, v in sorted(loss.items())},
        "C_grid": "10^linspace(-6, 5, 45): one value a decade until the held-out log-loss rose for two decades, "
                  "then ±2 grid steps around the best"}


def out_of_fold(x: np.ndarray, y: np.ndarray, n_classes: int, methods=("knn", "linear"), n_folds: int = 5,
                seed: int = 0, k: int = 20, T: float = 0.07, folds: np.ndarray | None = None,
                C: float | None = None) -> OutOfFold:
    """Out-of-fold class probabilities: for each fold, kNN (weighted vote over the other folds' items) and/or the
    linear probe (multinomial logistic regression fitted on the other folds), averaged. An item's own label is
    never used to score it. `folds`: a fold number per item instead of the seeded stratified ones.

    The linear probe's C is chosen once (`choose_C`, held-out log-loss on the first fold's training part, which
    the first fold's labels never enter), not per fold: the folds' training parts share three quarters of their
    items, and the sweep cost three times the five fits (measured). Every fold is then fitted at that C in
    float32, warm-started from the previous fold's solution. `C`: use this value instead of choosing one."""
    import torch

    from embedsearch.core.vectors import to_float32
    from embedsearch.evaluate.methods.knn import knn_scores
    from embedsearch.evaluate.methods.linear import Preconditioned, fit_logreg

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    folds = stratified_folds(y, n_folds, seed) if folds is None else np.asarray(folds)
    n_folds = int(folds.max()) + 1
    out = {m: np.zeros((len(x), n_classes)) for m in methods}
    lin = {}
    with progress.bar(n_folds * len(methods) + ("linear" in methods), "label issues: out-of-fold",
                      unit="fit") as bar:
        init = None  # the previous fold's (W, b)
        for f in range(n_folds):
            te, tr = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
            if "knn" in methods:
                bank = Bank(x[tr])
                s, i = topk(bank, l2_normalize(x[te]), k, desc=f"label issues: kNN fold {f + 1}")
                out["knn"][te] = knn_scores(s, y[tr][i], min(k, len(tr)), n_classes, T)
                bar.update()
            if "linear" not in methods:
                continue
            if len(np.unique(y[tr])) < 2:
                # the other folds hold one class (the selection's other classes all sit in this fold): a model
                # fitted on them can only say that class
                out["linear"][te, y[tr][0]] = 1.0
                bar.update()
                continue
            if C is None:
                bar.set_postfix_str("choosing C")
                C, lin = choose_C(x[tr], y[tr], n_classes, seed, device=dev)
                bar.set_postfix_str(f"C={C:.3g}")
                bar.update()
            Y = torch.from_numpy(np.asarray(y[tr], np.int64)).to(dev)
            W, b, _ = fit_logreg(Preconditioned(x[tr], dev, torch.float32), Y, n_classes, C, init, tol=FOLD_TOL,
                                 block_rows=block_rows(x.shape[1]))
            init = (W, b)
            z = torch.from_numpy(to_float32(x[te])).to(dev) @ W + b
            out["linear"][te] = torch.softmax(z.double(), 1).cpu().numpy()
            bar.update()
    probs = sum(out.values()) / len(out)
    params = {"methods": list(methods), "folds": n_folds, "stratified": True, "seed": seed,
              "knn": {"k": k, "T": T} if "knn" in methods else None,
              "linear": {"C": C, **lin, "solver": f"L-BFGS (torch, float32), gradient tolerance {FOLD_TOL}, each "
                         "fold warm-started from the previous fold's solution"} if "linear" in methods else None,
              "combination": "mean of the methods' probabilities" if len(out) > 1 else "one method"}
    return OutOfFold(probs=probs, folds=folds, params=params)


def label_issue_scores(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, suggested class) per item: score = 1 − p(given label), cleanlab's 'self-confidence' ranking
    reversed (higher = more likely mislabelled); suggestion = the most probable class."""
    return 1.0 - probs[np.arange(len(y)), y], probs.argmax(axis=1)


def flag_label_issues(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict]:
    """How many labels are likely wrong, and which: (flagged mask, a record of the estimate).

    1. Threshold per class j: the mean p(j) the model gives the items labelled j — what "confidently j" means for
       this model and class (a confident model's threshold is high, a hesitant one's low).
    2. Confident joint: each item counted at (given label, the most probable class among those whose p reaches
       their threshold); items reaching no threshold are not counted.
    3. Calibration: each row rescaled so it sums to its class's number of items (the uncounted items are assumed
       to be distributed like the counted ones); the off-diagonal mass of row i is the estimated number of items
       labelled i that belong elsewhere. Rounded, summed: the estimated number of wrong labels.
    4. Flags: in each class, that many of its items, lowest p(given label) first, among those whose most probable
       class is another one (an item the model agrees with is never flagged, so the flagged count can fall short
       of the estimate)."""
    n, K = probs.shape
    counts = np.bincount(y, minlength=K)
    own = probs[np.arange(n), y]
    thr = np.full(K, np.inf)  # a class no item is labelled with: nothing is confidently it
    for j in np.flatnonzero(counts):
        thr[j] = own[y == j].mean()
    above = probs >= thr
    confident = np.where(above, probs, -np.inf).argmax(axis=1)
    counted = above.any(axis=1)
    joint = np.zeros((K, K))
    np.add.at(joint, (y[counted], confident[counted]), 1)
    rows = joint.sum(axis=1)
    calibrated = joint * (counts / np.maximum(rows, 1))[:, None]
    wrong = np.rint(calibrated.sum(axis=1) - np.diag(calibrated)).astype(np.int64)
    flagged = np.zeros(n, bool)
    disagree = probs.argmax(axis=1) != y
    for c in np.flatnonzero(wrong):
        pos = np.flatnonzero((y == c) & disagree)
        flagged[pos[np.argsort(own[pos], kind="stable")[:wrong[c]]]] = True
    est = int(wrong.sum())
    return flagged, {
        "estimated_wrong": est, "estimated_rate": round(est / n, 6) if n else 0.0, "flagged": int(flagged.sum()),
        "estimated_wrong_per_class": wrong.tolist(), "confident_items": int(counted.sum()),
        "thresholds": np.round(np.where(np.isfinite(thr), thr, 1.0), 6).tolist(),
        "decision": "confident learning: per-class thresholds = mean out-of-fold p(class) over the items labelled "
                    "with it; confident joint of (given, most probable class reaching its threshold) calibrated to "
                    "the class counts; its off-diagonal row sums = estimated wrong labels per class; that many of "
                    "each class's items flagged, lowest p(given label) first, among those predicted as another "
                    "class"}


def find_label_issues(ix, where: str | None = None, methods=("knn", "linear"), n_folds: int = 5, seed: int = 0,
                      commit: bool = True) -> dict:
    """Labelled items ranked by how unlikely their label is under out-of-fold predictions (`out_of_fold`), and the
    ones judged wrong (`flag_label_issues`). Stored as `insight_label_issue` (score: 1 − p(given label)),
    `insight_suggested_label` (the most probable class) and `insight_label_flagged` (the decision).

    A class with fewer labelled items than folds is warned about (stderr) and recorded in the result
    (`small_classes`): its items are scored by models that saw only its other items — none for a class of one,
    whose item then scores near 1 (ranked as a likely error) whatever its image."""
    from embedsearch.core.errors import EvalError

    sel, x = load(ix, where, "label issues", labelled=True)
    classes = ix.classes()
    y = sel["class_index"]
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        raise EvalError(f"label issues: `{where or 'all items'}` selects labelled items of one class "
                        f"({classes[present[0]]!r}); scoring a label needs items of at least 2 classes")
    small = {classes[c]: int(n) for c, n in zip(present, counts, strict=True) if n < n_folds}
    for name, n in small.items():
        log.warning("label issues: class %r has %d labelled item%s, fewer than the %d folds: %s", name, n,
                    "" if n == 1 else "s", n_folds,
                    "no model that scores it has seen its class, so its score is near 1 (ranked as a likely label "
                    "error) whatever its image" if n == 1 else
                    f"each is scored by models that saw only the other {n - 1} of its class, so its scores are "
                    "less reliable")
    oof = out_of_fold(x, y, len(classes), methods=tuple(methods), n_folds=n_folds, seed=seed)
    score, sugg = label_issue_scores(oof.probs, y)
    flagged, decision = flag_label_issues(oof.probs, y)
    decision["estimated_wrong_per_class"] = {classes[c]: int(w) for c, w in
                                             enumerate(decision["estimated_wrong_per_class"]) if w}
    decision["thresholds"] = {classes[c]: t for c, t in zip(present, np.asarray(decision["thresholds"])[present],
                                                             strict=True)}
    order = np.lexsort((sel["id"], -score))
    rows = [{"rank": r + 1, "id": int(sel["id"][p]), "label": sel["label"][p], "suggested": classes[sugg[p]],
             "score": round(float(score[p]), 6), "p_label": round(float(1 - score[p]), 6),
             "p_suggested": round(float(oof.probs[p, sugg[p]]), 6), "flagged": bool(flagged[p]),
             "split": sel["split"][p], "path": sel["path"][p]}
            for r, p in enumerate(order)]
    config = {"where": where, "n": len(y), **oof.params, "small_classes": small,
              "score": "1 − out-of-fold p(given label) (cleanlab's self-confidence, reversed: higher = more likely "
                       "mislabelled)", **decision}
    run_id = None
    if commit:
        run_id = store_columns(ix, "label-issues", sel["id"], {
            "label_issue": ("DOUBLE", score.astype(float).tolist()),
            "suggested_label": ("VARCHAR", [classes[c] for c in sugg]),
            "label_flagged": ("BOOLEAN", flagged.tolist())}, config)
    return {**config, "run_id": run_id, "issues": rows, "probs": oof.probs, "ids": sel["id"], "labels": y,
            "flagged_mask": flagged}
