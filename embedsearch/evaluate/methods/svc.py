"""Support vector classifiers on standardized vectors: RBF SVC (the notebooks' setting) and LinearSVC with C
chosen on a held-out part of train."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.evaluate.methods.base import Fitted, Method, Skipped, heldout, register

log = logging.getLogger(__name__)

SVC_WARN_N = 50_000
SVC_MAX_CLASSES = 500  # RBF SVC's one-vs-one cost grows with classes²


def svc_probe(xtr, ytr, kind: str = "rbf", seed: int = 0):
    """`rbf`: SVC(kernel="rbf", gamma="scale", C=1) as in the notebooks; `linear`: LinearSVC with C chosen on the
    held-out part. Both on standardized features (cuML's SVC when installed)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    Xs = scaler.transform(xtr)
    if kind == "rbf":
        n_cls = len(np.unique(ytr))
        if n_cls > SVC_MAX_CLASSES:
            raise EvalError(f"RBF SVC is one-vs-one: {n_cls} classes need {n_cls * (n_cls - 1) // 2:,} binary SVMs "
                            f"and as many decision values per item (run up to {SVC_MAX_CLASSES} classes); use "
                            "LinearSVC or the linear probe")
        n = len(xtr)
        if n > SVC_WARN_N:
            est = 1e-9 * n * n * xtr.shape[1] / 384
            log.warning("RBF SVC on %d training items costs O(n²): expect on the order of %.0f min on CPU; "
                        "install cuML for GPU SVC, or use the linear probe", n, est / 60)
        try:
            from cuml.svm import SVC as _SVC  # noqa: N811
            backend = "cuml"
        except ImportError:
            from sklearn.svm import SVC as _SVC  # noqa: N811
            backend = "sklearn"
        clf = _SVC(kernel="rbf", gamma="scale", C=1.0, decision_function_shape="ovr").fit(Xs, ytr)
        params = {"kernel": "rbf", "gamma": "scale", "C": 1.0, "backend": backend, "features": "standardized"}
    else:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        grid = np.logspace(-4, 1, 6)
        fit, held, split = heldout(ytr, seed, "LinearSVC")
        acc, unconverged = {}, []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            for C in grid:
                n_before = len(caught)
                m = LinearSVC(C=C, dual="auto", max_iter=2000, random_state=seed).fit(Xs[fit], ytr[fit])
                acc[float(C)] = float((m.predict(Xs[held]) == ytr[held]).mean())
                if len(caught) > n_before:
                    unconverged.append(float(C))
            C = max(acc, key=lambda c: (acc[c], -c))
            clf = LinearSVC(C=C, dual="auto", max_iter=2000, random_state=seed).fit(Xs, ytr)
        params = {"C": C, "C_tried": {f"{c:.3g}": round(a, 5) for c, a in acc.items()},
                  "not_converged_at_C": unconverged, "max_iter": 2000,
                  **split,
                  "features": "standardized", "backend": "sklearn LinearSVC"}
    classes_ = np.asarray(clf.classes_)

    def predict(q, n_classes):
        d = np.asarray(clf.decision_function(scaler.transform(q)))
        if d.ndim == 1:  # binary: one column, positive = classes_[1]
            d = np.stack([-d, d], axis=1)
        out = np.full((len(q), n_classes), -np.inf)
        out[:, classes_] = d
        return out

    return predict, params, (scaler, clf)


@dataclass
class RbfFitted(Fitted):
    """RBF SVC: its support vectors are tied to sklearn internals, so it is not saved as a probe."""

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

    def fit(self, train, ctx):
        out = []
        for kind in ("rbf", "linear"):
            try:
                predict, params, (scaler, clf) = svc_probe(train.x, train.y, kind, seed=train.seed)
            except EvalError as e:  # one variant cannot run here (too many classes, nothing to hold out)
                out.append(Skipped(self.name, "SVC rbf" if kind == "rbf" else "LinearSVC", reason=str(e)))
                continue
            if kind == "rbf":
                out.append(RbfFitted(self.name, "SVC rbf", params, predict=predict, n_classes=train.n_classes))
            else:
                out.append(LinearSvcFitted(self.name, "LinearSVC", params, mean=scaler.mean_, scale=scaler.scale_,
                                           W=clf.coef_.T, b=clf.intercept_, classes=np.asarray(clf.classes_, np.int64),
                                           n_classes=train.n_classes))
        return out

    def load(self, t, meta):
        return LinearSvcFitted(self.name, meta.get("variant", "LinearSVC"), meta.get("params", {}), mean=t["mean"],
                               scale=t["scale"], W=t["W"], b=t["b"], classes=t["classes"],
                               n_classes=int(meta.get("n_classes", 0)))

    def shapes(self, t, dim, n_classes):
        m = t["b"].shape[0] if "b" in t and t["b"].ndim == 1 else -1
        return {"mean": (dim,), "scale": (dim,), "W": (dim, m), "b": (m,),
                "classes": (m if m > 1 else 2,)}  # two classes: one margin column
