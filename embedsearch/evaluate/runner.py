"""Running the evaluation methods on an index's selections: `evaluate` and `run_and_commit`.

`evaluate` reads the selections, runs the train/test leak step, reuses results committed for the same setting,
logs the plan and runs each method, scoring test in blocks; `run_and_commit` is the run `embedsearch eval`
makes, each result committed as it lands."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import uuid

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.evaluate.computed import column
from embedsearch.evaluate.methods import (
    ORDER,
    REGISTRY,
    Context,
    Fitted,
    Shape,
    Skipped,
    TrainSet,
    measure_rates,
)
from embedsearch.evaluate.methods.knn import KNN_KS, KNN_T
from embedsearch.evaluate.metrics import predictions_of, report_from_predictions
from embedsearch.evaluate.results import ResultStore
from embedsearch.evaluate.run import RESULT_SCHEMA, EvalResult, EvalRun, format_duration
from embedsearch.query.exact import nearest_in

log = logging.getLogger("embedsearch.evaluate")  # the name eval's log lines have always carried

METHODS = ORDER
DEFAULT_TRAIN, DEFAULT_TEST = "split = 'train'", "split = 'test'"


def applicable_methods(ix) -> list[str]:
    return [m for m in METHODS if REGISTRY[m].needs is None or (REGISTRY[m].needs == "text" and has_text_tower(ix))]


def has_text_tower(ix) -> bool:
    """open_clip indexes, and hf: CLIP / SigLIP-style models whose text tower loaded, can embed text."""
    return ix.manifest.space.kind == "open_clip" or bool(ix.manifest.backbone.get("text_tower"))


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
             seed: int = 0, prompts: str | None = None, knn_ks=KNN_KS, knn_t: float = KNN_T, svc: str = "auto",
             reuse: bool = True, on_result=None, run: EvalRun | None = None,
             leak_threshold: float | None = None) -> EvalRun:
    """Run each method (evaluate/methods, one module per family) on the train/test selections of an opened index.

    A method that cannot run on these selections (nothing can be held out to choose its hyper-parameters) is
    recorded in `run.skipped` with its reason, and the others still run. `on_result(run, i)` is called as result
    `i` lands (`eval` commits it there); pass `run` to have results appended to a run object you hold.

    With `reuse`, a method whose every variant was already committed to this index's catalog for the same setting
    (`setting_key`: index snapshot, selections — their predicates, ids and labels —, seed, parameters, the digest
    of embedsearch's own source files and the numeric libraries' versions) is not run again: its stored results
    are added as they are, and `run.timings` names the run they came from. With `on_result` (a run that commits
    its results, as `eval`), probes/ is kept in step with the run: a reused method that saves a probe puts that
    setting's probe back (`probes.restore_probe`; a reused result whose probe is gone is computed again), and a
    method that runs and leaves no probe removes the older one. Before the first method
    the plan — each method's estimated time on this machine — is logged; `run.timings` holds estimate and
    measured time per method.

    >>> run = evaluate(Index.open("digits-pixels"), methods=["knn", "linear"])   # doctest: +SKIP
    >>> run.table()                                                               # doctest: +SKIP
    """
    if methods is not None:  # `--methods "knn, linear"`: the names as written, without the spaces
        methods = [str(m).strip() for m in methods if str(m).strip()]
        if not methods:
            raise EvalError(f"no method named: expected some of {', '.join(METHODS)}")
    methods = list(methods or applicable_methods(ix))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise EvalError(f"unknown method {bad[0]!r}: expected one of {', '.join(METHODS)}")
    for m in methods:
        if REGISTRY[m].needs == "text" and not has_text_tower(ix):
            raise EvalError(f"{m} needs a backbone with a text tower (open_clip, or a CLIP-style hf: model); "
                            f"{ix.name} was built with {ix.backbone_spec}")
    classes = ix.classes()
    C = len(classes)
    if C < 2:
        raise EvalError(f"index {ix.name} has {C} classes; evaluation needs labels with at least 2 classes")
    t_read = time.perf_counter()
    tr_ids, ytr, xtr = load_selection(ix, train, "train")
    te_ids, yte, xte = load_selection(ix, test, "test")
    t_read = time.perf_counter() - t_read
    overlap = np.intersect1d(tr_ids, te_ids)
    if len(overlap):
        raise EvalError(f"train and test selections share {len(overlap)} items (e.g. id {overlap[0]}): "
                        "make --train and --test disjoint")
    rates = measure_rates()
    # with --leak-threshold the leak search is an exact (test × train) similarity product: announced with its
    # estimate before it runs; otherwise the stored decision of a calibrated `leaks` run is read (no search)
    leak_est = 2 * len(yte) * len(ytr) * xtr.shape[1] / rates.flops if leak_threshold is not None else 0.0
    log.info("read %d train + %d test vectors in %s%s", len(ytr), len(yte), format_duration(t_read),
             f"; train/test leak search ~{format_duration(leak_est)}" if leak_threshold is not None else "")
    t_leak = time.perf_counter()
    leaked, leaks = (_leaks(tr_ids, xtr, te_ids, xte, leak_threshold) if leak_threshold is not None
                     else _stored_leaks(ix, train, test, tr_ids, te_ids))
    t_leak = time.perf_counter() - t_leak
    run = run or EvalRun(uuid.uuid4().hex[:12], ix.name)
    run.preamble = [{"method": "read", "seconds": round(t_read, 3), "estimate_s": None,
                     "note": f"{len(ytr)} train + {len(yte)} test vectors from the parts"},
                    {"method": "leaks", "seconds": round(t_leak, 3), "estimate_s": float(f"{leak_est:.3g}"),
                     "note": f"{leaks['decided_by']}: {leaks['n']} found" if leaks["reported"]
                     else f"not reported: {leaks['why']}"}]
    in_train = np.bincount(ytr, minlength=C) > 0
    unseen = np.bincount(yte[~in_train[yte]], minlength=C)
    if unseen.any():
        log.warning("test selection: %d items of %d classes have no train item; methods trained on train count "
                    "them as errors (e.g. %s)", int(unseen.sum()), int((unseen > 0).sum()),
                    classes[int(np.flatnonzero(unseen)[0])])
    ctx = Context(ix=ix, prompts=prompts, knn_ks=tuple(knn_ks), knn_t=knn_t, n_test=len(yte), svc=svc)
    setting = {**_setting(ix, tr_ids, ytr, te_ids, yte, seed, ctx),
               "leak_threshold": leaks["threshold"], "leaks_from": leaks.get("run_id"),
               "where": {"train": train, "test": test}}
    order = [m for m in METHODS if m in methods]
    keys = {m: setting_key(setting, m) for m in order}
    done = ResultStore(ix).reusable(keys) if reuse else {}
    from embedsearch.evaluate import probes

    # a run that commits its results (`on_result`, as `eval` does) keeps probes/ in step with them
    committing = on_result is not None
    restore_probe = functools.partial(probes.restore_probe, ix) if committing else lambda *_: None
    drop_probe = functools.partial(probes.drop_probe, ix) if committing else lambda *_: None
    for m in list(done):  # a result that came with a probe is reused only with that very probe
        if committing and any(d["reuse"].get("probe") for d in done[m]) and not probes.has_probe(ix, m, keys[m]):
            log.info("%s: the probe saved with run %s is gone; computing it again", m, done[m][0]["run_id"])
            del done[m]
    run.machine = rates.to_dict()
    shape = Shape(len(ytr), len(yte), xtr.shape[1], C, xtr.dtype.itemsize)
    estimates = {m: REGISTRY[m].estimate(shape, rates, ctx) for m in order}
    log.info("plan on %d train × %d test × %d-d, %d classes: %s", shape.n, shape.m, shape.d, C, "; ".join(
        f"{m} reused (run {done[m][0]['run_id']})" if m in done else
        f"{m} ~{format_duration(estimates[m])}" if estimates[m] is not None else m for m in order))
    base = {"schema": RESULT_SCHEMA, "run_id": run.run_id, "index": ix.name, "backbone": ix.backbone_spec,
            "space": ix.manifest.space.to_dict(), "seed": seed,
            "train": {"where": train, "n": int(len(ytr)), "n_classes": int(len(np.unique(ytr)))},
            "test": {"where": test, "n": int(len(yte)), "n_classes": int(len(np.unique(yte))),
                     "classes_without_train": {classes[c]: int(unseen[c]) for c in np.flatnonzero(unseen)},
                     "leaks": leaks},
            "classes": classes}
    trainset = TrainSet(xtr, ytr, tr_ids, C, seed)

    def add(f: Fitted, seconds: float, pred: np.ndarray, hits: dict, tallies: dict, reuse: dict) -> None:
        params = {**f.params, **{name: {k: n / len(yte) for k, n in t.items()} for name, t in tallies.items()}}
        metrics, pred = report_from_predictions(yte, pred, hits, classes, seed=seed)
        per_class, confusion = metrics.pop("per_class"), metrics.pop("confusion")
        if leaked is None:  # no trustworthy leak detection for this space: no number that looks like a correction
            metrics["without_leaks"] = None
        else:
            clean = ~leaked
            metrics["without_leaks"] = {"top1": float((pred[clean] == yte[clean]).mean()) if clean.any() else None,
                                        "n": int(clean.sum()), "removed": int(leaked.sum())}
        run.results.append(EvalResult({
            **base, "method": f.method, "variant": f.variant, "params": params, "metrics": metrics,
            "per_class": per_class, "confusion": confusion,
            "predictions": {"id": te_ids.tolist(), "true": yte.tolist(), "pred": pred.tolist()},
            "timings_s": {"fit_and_predict": round(seconds, 4)}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "reuse": reuse}, model=f))
        if on_result is not None:
            on_result(run, len(run.results) - 1)
        log.info("%s %s: top-1 %.4f (%.1fs)", f.method, f.variant, metrics["top1"], seconds)

    def skip(method: str, variant: str | None, reason: str) -> None:
        run.skipped.append({"method": method, "variant": variant, "reason": reason})
        log.warning("%s skipped: %s", variant or method, reason)

    for name in order:
        method = REGISTRY[name]
        t0 = time.perf_counter()
        row = {"method": name, "estimate_s": None if estimates[name] is None else float(f"{estimates[name]:.3g}")}
        if name in done:  # committed before for this very setting: taken as it is, with its probe
            if any(d["reuse"].get("probe") for d in done[name]):
                restore_probe(name, keys[name])
            else:
                drop_probe(name)
            run.results.extend(EvalResult(d) for d in done[name])
            run.timings.append({**row, "seconds": round(time.perf_counter() - t0, 4), "variants": len(done[name]),
                                "reused_from": done[name][0]["run_id"]})
            log.info("%s: reused the results of run %s (same setting)", name, done[name][0]["run_id"])
            continue
        if method.kind == "curve":
            params, curve = method.curve(trainset, xte, yte, ctx)
            run.results.append(EvalResult({**base, "method": name, "variant": "prototypes and kNN vs shots per class",
                                           "params": params, "curve": curve, "metrics": {},
                                           "timings_s": {"total": round(time.perf_counter() - t0, 4)},
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "reuse": {"key": keys[name], "variants": 1, "position": 0}}))
            run.timings.append({**row, "seconds": round(time.perf_counter() - t0, 4), "variants": 1,
                                "reused_from": None})
            if on_result is not None:
                on_result(run, len(run.results) - 1)
            continue
        try:
            fitted = method.fit(trainset, ctx)
        except EvalError as e:  # a degenerate setting for this method: recorded, the others still run
            skip(name, None, str(e))
            drop_probe(name)  # an older setting's probe would stand in for a result this run does not have
            continue
        fit_s = (time.perf_counter() - t0) / max(len(fitted), 1)
        for f in fitted:
            if isinstance(f, Skipped):
                skip(name, f.variant, f.reason)
        scored = [f for f in fitted if not isinstance(f, Skipped)]
        if not any(f.tensors() is not None for f in scored):
            drop_probe(name)
        outcomes = list(score_in_blocks(scored, xte, yte, te_ids, in_train))
        # the timing row first: `on_result` may write the run summary, and then it must count this method
        run.timings.append({**row, "seconds": round(time.perf_counter() - t0, 4), "variants": len(scored),
                            "reused_from": None})
        for j, (f, (secs, pred, hits, tallies)) in enumerate(zip(scored, outcomes, strict=True)):
            add(f, fit_s + secs, pred, hits, tallies, {"key": keys[name], "variants": len(scored), "position": j,
                                                       "probe": f.tensors() is not None})
    return run


LEAK_WARN_FRACTION = 0.01


def _stored_leaks(ix, train: str, test: str, tr_ids, te_ids) -> tuple[np.ndarray | None, dict]:
    """The leaks a `leaks` run decided for these very selections — calibrated on a space that separates copies
    (`leaks --calibrate`), or at a threshold the user gave — as a mask over test; (None, why not) otherwise: a
    fixed cosine means different things in different spaces (in a classifier's feature space it flags most of a
    test set), so no accuracy "without leaks" is reported from it."""
    import json

    none = {"reported": False, "threshold": None, "n": None, "fraction": None, "decided_by": None}
    row = ix.con.execute("SELECT run_id, config FROM runs WHERE kind = 'insight:leaks' AND status = 'complete' "
                         "ORDER BY finished DESC, run_id LIMIT 1").fetchone()
    hint = ("run `embedsearch leaks --calibrate` (or `--space thumbs`, the built-in duplicate space) for these "
            "selections, or give --leak-threshold")
    if row is None:
        return None, {**none, "why": f"no leak detection recorded for this index: {hint}"}
    cfg = json.loads(row[1]) if isinstance(row[1], str) else row[1]
    if (cfg.get("train"), cfg.get("test")) != (train, test) or (cfg.get("n_train"), cfg.get("n_test")) != (
            len(tr_ids), len(te_ids)):
        return None, {**none, "why": f"the latest `leaks` run (run {row[0]}) was for other selections or an "
                                     f"earlier snapshot: {hint}"}
    cal = cfg.get("calibration")
    if cal is None and cfg.get("threshold_how") != "given":
        return None, {**none, "why": f"the latest `leaks` run (run {row[0]}) used the default cosine, not a "
                                     f"calibrated space: {hint}"}
    col = column("leak_of")
    flagged = {int(r[0]) for r in ix.con.execute(f"SELECT id FROM items WHERE {col} IS NOT NULL").fetchall()}
    leaked = np.isin(te_ids, np.fromiter(flagged, np.int64, len(flagged)))
    frac = float(leaked.mean()) if len(leaked) else 0.0
    decided_by = (f"space {cfg.get('space', 'index')}, score {cal['score']}, threshold {cal['threshold']:.4g} "
                  f"(calibrated: AUROC {cal['auroc']:.3f})" if cal else
                  f"space {cfg.get('space', 'index')}, cosine ≥ {cfg['threshold']:g} (given; not calibrated)")
    return leaked, {"reported": True, "run_id": row[0], "threshold": cfg.get("threshold"), "n": int(leaked.sum()),
                    "fraction": round(frac, 6), "decided_by": f"`leaks` run {row[0]}: {decided_by}",
                    "how": "the test items that run flagged", "examples": []}


def _leaks(tr_ids, xtr, te_ids, xte, threshold: float) -> tuple[np.ndarray, dict]:
    """Test items with a near-duplicate in train at a cosine the user gave (`--leak-threshold`; exact float32
    search): a mask over test and the record every result carries."""
    i, j, s = nearest_in(xte, xtr, threshold, desc="eval: train/test leaks")
    leaked = np.zeros(len(te_ids), bool)
    leaked[i] = True
    frac = float(leaked.mean()) if len(leaked) else 0.0
    if frac > LEAK_WARN_FRACTION:
        log.warning("%d of %d test items (%.1f %%) have a near-duplicate in train (cosine ≥ %g, e.g. test id %d ~ "
                    "train id %d): accuracies are also reported without them; `embedsearch leaks` lists them, and "
                    "`embedsearch duplicates` shows whether this space separates copies at all (--leak-threshold)",
                    int(leaked.sum()), len(leaked), 100 * frac, threshold, int(te_ids[i[0]]), int(tr_ids[j[0]]))
    return leaked, {"reported": True, "threshold": threshold, "n": int(leaked.sum()), "fraction": round(frac, 6),
                    "decided_by": f"cosine ≥ {threshold:g} (given with --leak-threshold; not calibrated)",
                    "how": "test items whose most similar train item has cosine ≥ threshold (exact float32 search "
                           "of L2-normalized vectors)",
                    "examples": [[int(te_ids[a]), int(tr_ids[b]), round(float(c), 6)]
                                 for a, b, c in list(zip(i, j, s, strict=True))[:20]]}


@functools.cache
def code_digest() -> str:
    """sha256 over embedsearch's own files (each one's path and bytes; once per process, a few ms): the version
    string stays the same across edits of the code, so it alone let a changed method reuse an old number."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent  # the embedsearch package
    h = hashlib.sha256()
    for p in sorted(f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries that compute the numbers (a new BLAS or solver can move a result)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("numpy", "torch", "scikit-learn", "faiss-cpu", "faiss-gpu", "cuml"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _setting(ix, tr_ids, ytr, te_ids, yte, seed: int, ctx: Context) -> dict:
    """Everything a method's result depends on, besides the method: the index snapshot (its parts' checksums),
    the selected ids and their labels, the seed, the parameters, and the code that computes it (embedsearch's
    version and source digest, the numeric libraries' versions)."""
    from importlib.metadata import version
    from pathlib import Path

    def digest(*arrays) -> str:
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
        return h.hexdigest()

    prompts = hashlib.sha256(Path(ctx.prompts).read_bytes()).hexdigest() if ctx.prompts else None
    return {"schema": RESULT_SCHEMA, "embedsearch": version("embedsearch"), "code": code_digest(),
            "libraries": library_versions(), "parts": [p.sha256 for p in ix.manifest.parts],
            "train": digest(tr_ids, ytr), "test": digest(te_ids, yte), "seed": seed, "prompts": prompts,
            "knn_ks": list(ctx.knn_ks), "knn_t": ctx.knn_t, "svc": ctx.svc}


def setting_key(setting: dict, method: str) -> str:
    return hashlib.sha256(json.dumps({**setting, "method": method}, sort_keys=True).encode()).hexdigest()[:24]


SCORE_BLOCK_BYTES = 2 ** 27  # test rows are scored in blocks of at most this many bytes of (rows × classes) scores


def score_in_blocks(fitted: list[Fitted], x, y, ids, in_train):
    """Predictions, top-k hits and tallies of each variant, the test rows scored a block at a time (all variants
    of one block in turn, so kNN's variants share one neighbour search): memory stays bounded whatever the number
    of classes. Yields (seconds, pred, hits, tallies) per variant."""
    C = len(in_train)
    rows = max(1, SCORE_BLOCK_BYTES // (8 * C))
    acc = [{"s": 0.0, "pred": [], "hits": {}, "tallies": {}} for _ in fitted]
    for a in range(0, len(y), rows):
        xb, yb, ib = x[a:a + rows], y[a:a + rows], ids[a:a + rows]
        for f, st in zip(fitted, acc, strict=True):
            t0 = time.perf_counter()
            s = f.scores(xb, ib)
            if f.uses_train and not in_train.all():  # a classifier fitted on train cannot predict a class it lacks
                s = np.where(in_train, s, -np.inf)
            pred, hits = predictions_of(s, yb)
            st["pred"].append(pred)
            for k, h in hits.items():
                st["hits"].setdefault(k, []).append(h)
            for name, t in f.tally(xb, yb, ib).items():
                into = st["tallies"].setdefault(name, {})
                for k, n in t.items():
                    into[k] = into.get(k, 0) + n
            st["s"] += time.perf_counter() - t0
    for st in acc:
        yield (st["s"], np.concatenate(st["pred"]) if st["pred"] else np.zeros(0, np.int64),
               {k: np.concatenate(v) for k, v in st["hits"].items()}, st["tallies"])


def run_and_commit(ix, run: EvalRun | None = None, **eval_kwargs) -> EvalRun:
    """`evaluate`, each result committed as it lands (`ResultStore.commit`: probe, reports/ JSON, catalog row)
    with the run's summary (its time table) written beside it, and the summary once more at the end: the
    evaluate half of `embedsearch eval` and `quickstart` (report/tables.py renders the run)."""
    store = ResultStore(ix)

    def commit(run, i):  # each result committed as it lands, and the run's summary (time table) with it
        store.commit(run, i)
        store.write_summary(run)

    run = evaluate(ix, on_result=commit, run=run, **eval_kwargs)
    store.write_summary(run)
    return run
