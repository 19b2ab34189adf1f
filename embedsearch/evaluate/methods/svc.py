"""Support vector classifiers on standardized vectors: RBF SVC (the notebooks' setting) and a linear SVM
(LinearSVC's squared hinge, one-vs-rest) with C chosen on a held-out part of train.

The exact RBF SVC costs O(n²·d) (libsvm); above `SVC_EXACT_BUDGET_S` of estimated time, `--svc auto` (the default)
runs its documented approximation instead and names it so in the variant and params: the RBF kernel's Nyström
features on `NYSTROEM_LANDMARKS` seeded train items, then a linear SVM on them with C chosen on the held-out part.
`--svc exact` runs the exact one whatever the size (after saying how long it should take); `--svc nystroem` always
approximates."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.core.vectors import standardize
from embedsearch.evaluate.methods.base import Fitted, Method, Skipped, heldout, one_class, register

log = logging.getLogger(__name__)

SVC_MAX_CLASSES = 500  # RBF SVC's one-vs-one cost grows with classes²
SVC_EXACT_BUDGET_S = 600.0  # `auto` runs the exact RBF SVC when its estimate is at most this
# seconds per (n² + n·m)·d of sklearn's RBF SVC fit + predict, measured on this project's 2-core x86 CPU
# (2–6.5e-10 over n 3,000–6,000, d 256–1,024, 10–100 classes; libsvm is one thread, so no rate scales it)
SVC_RBF_S = 4e-10
NYSTROEM_LANDMARKS = 2048
SVC_POLICIES = ("auto", "exact", "nystroem")
SVM_C_GRID = np.logspace(-4, 1, 6)


def rbf_estimate_s(n: int, m: int, d: int) -> float:
    return SVC_RBF_S * d * (n * n + n * m)


def rbf_policy(policy: str, n: int, m: int, d: int) -> tuple[bool, str]:
    """(exact?, why) for the RBF variant on n train and m test rows of dimension d."""
    if policy not in SVC_POLICIES:
        raise EvalError(f"svc policy {policy!r}: expected one of {', '.join(SVC_POLICIES)}")
    est = rbf_estimate_s(n, m, d)
    if policy == "exact":
        return True, f"exact (asked for; estimated {est / 60:.1f} min)"
    if policy == "nystroem":
        return False, "Nyström approximation (asked for)"
    if est <= SVC_EXACT_BUDGET_S:
        return True, f"exact (estimated {est / 60:.1f} min, within the {SVC_EXACT_BUDGET_S / 60:.0f} min budget)"
    return False, (f"Nyström approximation: the exact RBF SVC was estimated at {est / 60:.0f} min, over the "
                   f"{SVC_EXACT_BUDGET_S / 60:.0f} min budget (--svc exact runs it anyway)")


def linear_svm(Z: np.ndarray, y: np.ndarray, seed: int, what: str, grid=SVM_C_GRID, device: str | None = None):
    """One-vs-rest L2 linear SVM with LinearSVC's squared hinge: min ½‖w_c‖² + C·Σ_i max(0, 1 − t_ic(w_c·z_i +
    b_c))², t = ±1, per class (the intercept unpenalized; liblinear also penalizes it), solved for all classes at
    once by the linear probe's preconditioned L-BFGS (`linear.fit_l2`). C is chosen on the held-out part over
    `grid`, increasing and warm-started, stopping after two falls; then refit on all of Z.
    Returns (W (d, k), b (k,), classes (k,), params)."""
    import torch

    from embedsearch.core import progress
    from embedsearch.evaluate.methods.linear import FLOAT64_BUDGET, Preconditioned, fit_l2, squared_hinge

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    classes = np.unique(y)
    k = len(classes)
    dtype = torch.float64 if Z.size * k <= FLOAT64_BUDGET else torch.float32
    col = torch.from_numpy(np.searchsorted(classes, y)).to(dev)
    T = -torch.ones(len(y), k, dtype=dtype, device=dev)
    T[torch.arange(len(y), device=dev), col] = 1
    fit, held, split = heldout(y, seed, what)
    pre = Preconditioned(Z[fit], dev, dtype)
    z_held = torch.from_numpy(Z[held]).to(dev, dtype)
    acc, iters, init, worse = {}, {}, None, 0
    with progress.bar(len(grid) + 1, f"{what}: C sweep", unit="C") as bar:
        for C in grid:
            W, b, iters[float(C)] = fit_l2(pre, squared_hinge(T[fit]), k, float(C), 1.0, init)
            init = (W, b)
            acc[float(C)] = float(((z_held @ W + b).argmax(1) == col[held]).double().mean())
            bar.update()
            bar.set_postfix_str(f"C={C:.3g} held-out {acc[float(C)]:.4f}")
            worse = worse + 1 if acc[float(C)] < max(acc.values()) else 0
            if worse == 2:  # two decades of falling held-out accuracy: larger C only overfits more
                break
        C = max(acc, key=lambda c: (acc[c], -c))  # ties: the stronger regularization
        bar.total = len(acc) + 1
        W, b, refit = fit_l2(Preconditioned(Z, dev, dtype), squared_hinge(T), k, C, 1.0)
        bar.update()
    params = {"C": C, "C_tried": {f"{c:.3g}": round(a, 5) for c, a in acc.items()}, **split,
              "iterations": {f"{c:.3g}": n for c, n in iters.items()} | {"refit": refit},
              "loss": "squared hinge, one-vs-rest, L2 (LinearSVC's objective; intercept unpenalized)",
              "solver": f"L-BFGS (torch, {str(dtype).removeprefix('torch.')}), preconditioned, warm-started along "
                        "the C grid (10^-4 … 10^1), stopping after 2 falls of held-out accuracy",
              "device": dev}
    return W.cpu().double().numpy(), b.cpu().double().numpy(), classes, params


def exact_rbf_svc(xtr, ytr):
    """SVC(kernel="rbf", gamma="scale", C=1) on standardized features, as in the notebooks (cuML's on a GPU when
    installed). Returns (predict(q, n_classes), params)."""
    n_cls = len(np.unique(ytr))
    one_class(ytr, "RBF SVC")
    if n_cls > SVC_MAX_CLASSES:
        raise EvalError(f"RBF SVC is one-vs-one: {n_cls} classes need {n_cls * (n_cls - 1) // 2:,} binary SVMs "
                        f"and as many decision values per item (run up to {SVC_MAX_CLASSES} classes); use the "
                        "linear SVM or the linear probe")
    Xs, mean, scale = standardize(xtr)
    try:
        from cuml.svm import SVC as _SVC  # noqa: N811
        backend = "cuml"
    except ImportError:
        from sklearn.svm import SVC as _SVC  # noqa: N811
        backend = "sklearn"
    clf = _SVC(kernel="rbf", gamma="scale", C=1.0, decision_function_shape="ovr").fit(Xs, ytr)
    classes_ = np.asarray(clf.classes_)

    def predict(q, n_classes):
        d = np.asarray(clf.decision_function((np.asarray(q, np.float64) - mean) / scale))
        if d.ndim == 1:  # binary: one column, positive = classes_[1]
            d = np.stack([-d, d], axis=1)
        out = np.full((len(q), n_classes), -np.inf)
        out[:, classes_] = d
        return out

    return predict, {"kernel": "rbf", "gamma": "scale", "C": 1.0, "backend": backend, "features": "standardized"}


def nystroem_svc(xtr, ytr, seed: int, landmarks: int = NYSTROEM_LANDMARKS):
    """The RBF SVC's approximation: the RBF kernel (gamma "scale", as the exact one) mapped to Nyström features on
    `landmarks` seeded train items (sklearn's Nystroem), then `linear_svm` on them. Returns (predict, params)."""
    from sklearn.kernel_approximation import Nystroem

    one_class(ytr, "Nyström SVC")
    Xs, mean, scale = standardize(xtr)
    gamma = 1.0 / (Xs.shape[1] * float(np.mean(np.var(Xs, axis=0, dtype=np.float64))))  # "scale": 1 / (d·Var X)
    m = min(landmarks, len(Xs))
    ny = Nystroem(kernel="rbf", gamma=gamma, n_components=m, random_state=seed).fit(Xs)

    def features(q):
        return np.concatenate([ny.transform(q[a:a + 8192]).astype(np.float32) for a in range(0, len(q), 8192)])

    W, b, classes, params = linear_svm(features(Xs), ytr, seed, "Nyström SVC")

    def predict(q, n_classes):
        out = np.full((len(q), n_classes), -np.inf)
        out[:, classes] = features(((np.asarray(q, np.float64) - mean) / scale).astype(np.float32)) @ W + b
        return out

    return predict, {"kernel": "rbf", "gamma": "scale", "approximation": f"Nyström, {m} landmarks (seeded sample "
                     f"of train, seed {seed}), then a linear SVM on the features", "features": "standardized",
                     **{f"svm_{k}" if k in ("C_tried", "iterations") else k: v for k, v in params.items()}}


@dataclass
class RbfFitted(Fitted):
    """RBF SVC, exact or approximated: its support vectors (or Nyström map) are sklearn objects, so it is not saved
    as a probe."""

    predict: object = None
    n_classes: int = 0

    def scores(self, x, ids=None):
        # the one-vs-one decision values are (rows × C(C-1)/2) inside sklearn: keep each call's share bounded
        pairs = max(1, self.n_classes * (self.n_classes - 1) // 2)
        rows = max(1, 2 ** 27 // (8 * pairs))
        return np.concatenate([self.predict(x[a:a + rows], self.n_classes) for a in range(0, len(x), rows)]) \
            if len(x) else np.zeros((0, self.n_classes))


@dataclass
class LinearSvcFitted(Fitted):
    mean: np.ndarray = None
    scale: np.ndarray = None
    W: np.ndarray = None  # (dim, m): one column per trained class, or one for two classes
    b: np.ndarray = None
    classes: np.ndarray = None  # the class index of each column (two classes: both, the column scores classes[1])
    n_classes: int = 0

    def scores(self, x, ids=None):
        d = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.W + self.b
        if d.shape[1] == 1:
            d = np.concatenate([-d, d], axis=1)
        out = np.full((len(x), self.n_classes), -np.inf)
        out[:, self.classes] = d
        return out

    def tensors(self):
        return {"mean": self.mean, "scale": self.scale, "W": self.W, "b": self.b,
                "classes": np.asarray(self.classes, np.int64)}


@register
class Svc(Method):
    name = "svc"
    order = 40

    def estimate(self, shape, rates, ctx):
        from embedsearch.evaluate.methods.linear import Linear

        exact, _ = rbf_policy(ctx.svc, shape.n, shape.m, shape.d)
        linear = Linear().estimate(shape, rates, ctx) / 2  # 7 values of C instead of ~16, two falls to stop
        if exact:
            return rbf_estimate_s(shape.n, shape.m, shape.d) + linear
        m = min(NYSTROEM_LANDMARKS, shape.n)
        nys = 2 * 2 * (shape.n + shape.m) * m * shape.d / rates.flops  # the features, float64
        return nys + linear * (1 + m / shape.d)

    def fit(self, train, ctx):
        out = []
        exact, why = rbf_policy(ctx.svc, len(train.y), ctx.n_test, train.x.shape[1])
        name = "SVC rbf" if exact else f"SVC rbf ≈ Nyström {min(NYSTROEM_LANDMARKS, len(train.y))} + linear SVM"
        log.info("svc: %s", why)
        try:
            if exact:
                predict, params = exact_rbf_svc(train.x, train.y)
            else:
                predict, params = nystroem_svc(train.x, train.y, train.seed)
            out.append(RbfFitted(self.name, name, {**params, "policy": why}, predict=predict,
                                 n_classes=train.n_classes))
        except EvalError as e:  # this variant cannot run here (too many classes, nothing to hold out)
            out.append(Skipped(self.name, name, reason=str(e)))
        try:
            Xs, mean, scale = standardize(train.x)
            W, b, classes, params = linear_svm(Xs, train.y, train.seed, "linear SVM")
            out.append(LinearSvcFitted(self.name, "linear SVM", {**params, "features": "standardized"}, mean=mean,
                                       scale=scale, W=W, b=b, classes=np.asarray(classes, np.int64),
                                       n_classes=train.n_classes))
        except EvalError as e:
            out.append(Skipped(self.name, "linear SVM", reason=str(e)))
        return out

    def load(self, t, meta):
        return LinearSvcFitted(self.name, meta.get("variant", "linear SVM"), meta.get("params", {}), mean=t["mean"],
                               scale=t["scale"], W=t["W"], b=t["b"], classes=t["classes"],
                               n_classes=int(meta.get("n_classes", 0)))

    def shapes(self, t, dim, n_classes):
        m = t["b"].shape[0] if "b" in t and t["b"].ndim == 1 else -1
        return {"mean": (dim,), "scale": (dim,), "W": (dim, m), "b": (m,),
                "classes": (m if m > 1 else 2,)}  # two classes: one margin column
