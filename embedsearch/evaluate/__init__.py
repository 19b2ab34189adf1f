"""Evaluation of an index: selections from the catalog, vectors from Parquet, the protocols, versioned result JSON."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.evaluate import protocols as P
from embedsearch.evaluate.metrics import classification_report

log = logging.getLogger(__name__)

RESULT_SCHEMA = "embedsearch.eval/1"
METHODS = ("prototypes", "knn", "linear", "svc", "mlp", "zeroshot", "fewshot")
DEFAULT_TRAIN, DEFAULT_TEST = "split = 'train'", "split = 'test'"


@dataclass
class EvalResult:
    """One (index, method) result; `to_dict()` is the JSON stored in reports/ and the catalog."""

    data: dict
    model: object = None  # the fitted classifier (not serialized into the JSON; saved as a probe)

    def to_dict(self) -> dict:
        return self.data

    @property
    def method(self) -> str:
        return self.data["method"]

    def headline(self) -> dict:
        m = self.data.get("metrics", {})
        return {"index": self.data["index"], "method": self.data["method"], "variant": self.data.get("variant"),
                "top1": m.get("top1"), "top5": m.get("top5"), "balanced_accuracy": m.get("balanced_accuracy"),
                "ci95_top1": m.get("ci95", {}).get("top1"), "n_train": self.data["train"]["n"],
                "n_test": self.data["test"]["n"], "params": _short_params(self.data.get("params", {}))}


@dataclass
class EvalRun:
    run_id: str
    index: str
    results: list[EvalResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "index": self.index, "results": [r.to_dict() for r in self.results]}

    def table(self):
        """Headline rows (a list of dicts with `to_arrow()` / `to_pandas()`)."""
        from embedsearch.core.results import Rows

        return Rows(r.headline() for r in self.results)


def _short_params(p: dict) -> str:
    keep = {k: v for k, v in p.items() if k in ("k", "T", "C", "kernel", "epochs", "hidden", "templates", "vote")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def applicable_methods(ix) -> list[str]:
    kind = ix.manifest["space"].get("kind")
    return [m for m in METHODS if m != "zeroshot" or kind == "open_clip"]


def load_selection(ix, where: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sel = ix.select(where)
    labelled = sel["class_index"] >= 0
    if not labelled.all():
        log.warning("%s selection: %d unlabelled items ignored", what, int((~labelled).sum()))
    ids, y = sel["id"][labelled], sel["class_index"][labelled]
    if len(ids) == 0:
        raise EvalError(f"{what} selection `{where}` has no embedded, labelled items")
    return ids, y, ix.vectors(ids)


def evaluate(ix, *, train: str = DEFAULT_TRAIN, test: str = DEFAULT_TEST, methods: list[str] | None = None,
             seed: int = 0, prompts: str | None = None, knn_ks=P.KNN_KS, knn_t: float = P.KNN_T) -> EvalRun:
    """Run each method on the train/test selections of an opened index (`Index.open`).

    >>> run = evaluate(Index.open("digits-pixels"), methods=["knn", "linear"])   # doctest: +SKIP
    >>> run.table()                                                               # doctest: +SKIP
    """
    methods = list(methods or applicable_methods(ix))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise EvalError(f"unknown method {bad[0]!r}: expected one of {', '.join(METHODS)}")
    if "zeroshot" in methods and ix.manifest["space"].get("kind") != "open_clip":
        raise EvalError(f"zeroshot needs an open_clip index; {ix.name} was built with {ix.backbone_spec}")
    classes = ix.classes()
    C = len(classes)
    if C < 2:
        raise EvalError(f"index {ix.name} has {C} classes; evaluation needs labels with at least 2 classes")
    tr_ids, ytr, xtr = load_selection(ix, train, "train")
    te_ids, yte, xte = load_selection(ix, test, "test")
    overlap = np.intersect1d(tr_ids, te_ids)
    if len(overlap):
        raise EvalError(f"train and test selections share {len(overlap)} items (e.g. id {overlap[0]}): "
                        "make --train and --test disjoint")
    in_train = np.bincount(ytr, minlength=C) > 0
    unseen = np.bincount(yte[~in_train[yte]], minlength=C)
    if unseen.any():
        log.warning("test selection: %d items of %d classes have no train item; methods trained on train count "
                    "them as errors (e.g. %s)", int(unseen.sum()), int((unseen > 0).sum()),
                    classes[int(np.flatnonzero(unseen)[0])])
    run = EvalRun(uuid.uuid4().hex[:12], ix.name)
    base = {"schema": RESULT_SCHEMA, "run_id": run.run_id, "index": ix.name, "backbone": ix.backbone_spec,
            "space": ix.manifest["space"], "seed": seed,
            "train": {"where": train, "n": int(len(ytr)), "n_classes": int(len(np.unique(ytr)))},
            "test": {"where": test, "n": int(len(yte)), "n_classes": int(len(np.unique(yte))),
                     "classes_without_train": {classes[c]: int(unseen[c]) for c in np.flatnonzero(unseen)}},
            "classes": classes}

    def add(method, variant, scores, params, seconds, extra=None, model=None, uses_train=True):
        if uses_train:  # a classifier fitted on train cannot predict a class train does not have
            scores = np.where(in_train, scores, -np.inf)
        metrics, pred = classification_report(yte, scores, classes, seed=seed)
        per_class, confusion = metrics.pop("per_class"), metrics.pop("confusion")
        run.results.append(EvalResult({
            **base, "method": method, "variant": variant, "params": params, "metrics": metrics,
            "per_class": per_class, "confusion": confusion,
            "predictions": {"id": te_ids.tolist(), "true": yte.tolist(), "pred": pred.tolist()},
            "timings_s": {"fit_and_predict": round(seconds, 4)}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {})}, model=model))
        log.info("%s %s: top-1 %.4f (%.1fs)", method, variant, metrics["top1"], seconds)

    for m in methods:
        t0 = time.perf_counter()
        if m == "prototypes":
            protos, has = P.prototypes(xtr, ytr, C)
            add(m, "nearest class prototype (cosine)", P.prototype_scores(protos, has, xte),
                {"prototype": "normalize(mean of L2-normalized train vectors)", "metric": "cosine"},
                time.perf_counter() - t0, model=(protos, has))
        elif m == "knn":
            ks = [k for k in knn_ks if k <= len(ytr)] or [len(ytr)]
            sims, idx = P.knn_neighbours(xtr, xte, max(ks), tr_ids, te_ids, ks=ks)
            labels = ytr[idx]
            exact = P.ExactSims(xtr, xte, idx)
            t_search = time.perf_counter() - t0
            sweep = {}
            for k in ks:
                sc = P.knn_scores(sims, labels, k, C, knn_t, exact, ranks=(1,))  # the sweep reports top-1
                sweep[str(k)] = float((sc.argmax(1) == yte).mean())
            sweep_majority = {str(k): float((P.knn_scores(sims, labels, k, C, None).argmax(1) == yte).mean())
                              for k in ks}
            head = 20 if 20 in ks else ks[0]
            common = {"T": knn_t, "features": "L2-normalized",
                      "search": "exact, whole train bank (float32 search; neighbour sets at each k and near-tied "
                                "votes settled in float64)",
                      "k_sweep_top1": sweep, "k_sweep_majority_top1": sweep_majority, "self_match": "dropped"}
            add(m, f"weighted k={head}, T={knn_t}", P.knn_scores(sims, labels, head, C, knn_t, exact),
                {"k": head, **common}, t_search)
            add(m, f"majority k={head}", P.knn_scores(sims, labels, head, C, None),
                {"k": head, "vote": "majority", **common}, t_search)
        elif m == "linear":
            predict, params, model = P.linear_probe(xtr, ytr, C, seed=seed)
            add(m, "logistic regression (L-BFGS)", predict(xte), params, time.perf_counter() - t0, model=model)
        elif m == "svc":
            for kind in ("rbf", "linear"):
                t0 = time.perf_counter()
                predict, params, model = P.svc_probe(xtr, ytr, kind, seed=seed)
                add(m, f"{'SVC rbf' if kind == 'rbf' else 'LinearSVC'}", predict(xte, C), params,
                    time.perf_counter() - t0, model=model)
        elif m == "mlp":
            predict, params, model = P.mlp_probe(xtr, ytr, C, seed=seed)
            add(m, "MLP 256 ReLU", predict(xte), params, time.perf_counter() - t0, model=model)
        elif m == "zeroshot":
            from embedsearch.evaluate.zeroshot import (
                class_vectors,
                read_prompt_file,
                templates_for,
                zeroshot_scores,
            )

            names, templates = (read_prompt_file(prompts, classes) if prompts else (classes, None))
            tname, default_t = templates_for(ix.manifest.get("source", {}).get("kind", ""))
            templates = templates or default_t
            bb = ix.backbone()
            cv = class_vectors(bb.text, names, templates)
            add(m, "CLIP text prompts", zeroshot_scores(cv, xte),
                {"templates": len(templates), "template_set": "user file" if prompts else tname,
                 "logit_scale": 100, "classnames": "user file" if prompts else "catalog class names"},
                time.perf_counter() - t0, uses_train=False)
        elif m == "fewshot":
            run.results.append(EvalResult({**base, "method": m, "variant": "prototypes and kNN vs shots per class",
                                           "params": {"seeds": 5, "knn_k": 20, "knn_T": knn_t},
                                           "curve": fewshot_curve(xtr, ytr, tr_ids, xte, yte, C, seed, knn_t),
                                           "metrics": {}, "timings_s": {"total": round(time.perf_counter() - t0, 4)},
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return run


def fewshot_curve(xtr, ytr, tr_ids, xte, yte, C, seed, knn_t, n_seeds: int = 5) -> list[dict]:
    """Top-1 of prototypes and kNN (k=20) with n train items per class, n ∈ {1, 2, 4, …, all}, over 5 seeds."""
    largest = int(np.bincount(ytr).max())
    shots = [n for n in (2 ** i for i in range(20)) if n < largest] + [largest]
    curve = []
    for n in shots:
        acc_p, acc_k = [], []
        for s in range(n_seeds):
            rng = np.random.default_rng(seed + s)
            pick = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:n] for c in np.unique(ytr)])
            protos, has = P.prototypes(xtr[pick], ytr[pick], C)
            acc_p.append(float((P.prototype_scores(protos, has, xte).argmax(1) == yte).mean()))
            k = min(20, len(pick))
            sims, idx = P.knn_neighbours(xtr[pick], xte, k)
            sc = P.knn_scores(sims, ytr[pick][idx], k, C, knn_t, P.ExactSims(xtr[pick], xte, idx), (1,))
            acc_k.append(float((sc.argmax(1) == yte).mean()))
            if n == largest:
                break  # all items: no sampling, one seed is the answer
        curve.append({"shots": n if n < largest else "all", "prototypes_mean": float(np.mean(acc_p)),
                      "prototypes_std": float(np.std(acc_p)), "knn_mean": float(np.mean(acc_k)),
                      "knn_std": float(np.std(acc_k)), "seeds": len(acc_p)})
    return curve


def save_run(ix, run: EvalRun) -> list[str]:
    """One JSON per (index, method variant) under reports/, the same rows in the catalog's results table, and the
    fitted classifiers as probes under probes/ (for `embedsearch classify`)."""
    from embedsearch.core.files import atomic_write_bytes
    from embedsearch.evaluate.probes import probe_tensors, save_probe
    from embedsearch.store.catalog import Catalog

    for r in run.results:
        t = probe_tensors(r.method, r.model) if r.model is not None else None
        if t is not None:
            save_probe(ix, r.method, t, {k: r.data[k] for k in ("run_id", "variant", "params", "train", "seed")})

    ix.close()
    ix.layout.reports.mkdir(exist_ok=True)
    paths = []
    cat = Catalog(ix.layout.catalog)
    for i, r in enumerate(run.results):
        p = ix.layout.reports / f"eval-{run.run_id}-{i:02d}-{r.method}.json"
        atomic_write_bytes(p, json.dumps(r.to_dict(), indent=1, default=_np).encode())
        paths.append(str(p))
        cat.add_result(run.run_id, r.method, 1, json.loads(json.dumps(r.to_dict(), default=_np)))
    return paths


def _np(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
