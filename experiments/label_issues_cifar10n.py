"""Label issues against real human label noise: CIFAR-10N (Wei et al., 2022), a human re-annotation of CIFAR-10's
50,000 training images, whose `aggre` labels (majority of three annotators) are wrong for 9.0 % of them. Given
labels = aggre, truth = the original (clean) labels; features = the index's vectors (e.g. a real CIFAR ResNet-20's
penultimate layer, 64-d). The reading: docs/benchmarks/label_issues_real.md.

    embedsearch index /work/data/cifar10 -n c10-r20 ...    # see experiments/leaks_cifar10.py for the command
    EMBEDSEARCH_HOME=/work/idx python experiments/label_issues_cifar10n.py c10-r20 \
        /work/data/cifar10/label_noise_truth.csv [--repeats 2] [--threads 1]

Side by side in one process, alternating, on the same vectors and labels:
- ours: `label_issues.out_of_fold` (kNN + linear probe, 5 stratified folds) + `flag_label_issues` (the decision);
- scikit-learn + cleanlab: `cross_val_predict(LogisticRegression(max_iter=1000), cv=5, method="predict_proba")` +
  `cleanlab.filter.find_label_issues(labels, pred_probs)` (its defaults).
Each ranking is scored by AUROC and AP of 1 − p(given label) against "aggre ≠ clean"; each flagged set by precision
and recall against it; each estimate (ours: the calibrated confident joint; cleanlab: the number it flags, its own
decision) against the true rate. Also each decision on the other's probabilities, so rule and probabilities can be
told apart. Times: wall clock, each pipeline from the vectors and labels in memory to its flags.
"""
import argparse
import csv
import json
import os
import platform
import time
import warnings

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from embedsearch.core import progress
from embedsearch.evaluate import label_issues as L
from embedsearch.reader import Index

progress.ENABLED = False

ap = argparse.ArgumentParser()
ap.add_argument("name", nargs="?", default="c10-r20")
ap.add_argument("truth", nargs="?", default="/work/data/cifar10/label_noise_truth.csv")
ap.add_argument("--repeats", type=int, default=2)
ap.add_argument("--json", help="also write the results here")
ap.add_argument("--threads", type=int, help="limit both pipelines to this many threads (torch, BLAS, OpenMP): on a "
                "shared machine, spinning worker threads slowed both 3–15× (measured)")
args = ap.parse_args()
if args.threads:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

ix = Index.open(args.name)
sel = ix.select("split = 'train'")
x = ix.vectors(sel["id"])
classes = ix.classes()
col = {c: i for i, c in enumerate(classes)}
with open(args.truth, newline="") as f:
    truth = {r["path"]: r for r in csv.DictReader(f)}
missing = [p for p in sel["path"] if p not in truth]
if missing:
    raise SystemExit(f"{args.truth}: {len(missing)} of the index's train paths are not in it (e.g. {missing[0]!r})")
given = np.array([col[truth[p]["aggre_label"]] for p in sel["path"]])
clean = np.array([col[truth[p]["clean_label"]] for p in sel["path"]])
wrong = given != clean
n = len(given)
print(f"{args.name}: {x.shape[0]} train vectors × {x.shape[1]}-d, {len(classes)} classes; given = aggre, "
      f"{wrong.sum()} wrong ({wrong.mean():.2%})", flush=True)


def ours():
    oof = L.out_of_fold(x, given, len(classes), seed=0)
    flagged, d = L.flag_label_issues(oof.probs, given)
    return oof.probs, flagged, d["estimated_wrong"], oof.params


def sklearn_cleanlab():
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs' convergence warnings on unscaled features
        probs = cross_val_predict(LogisticRegression(max_iter=1000), x, given, cv=5, method="predict_proba")
    flagged = find_label_issues(given, probs)
    return probs, flagged, int(flagged.sum()), {"model": "LogisticRegression(max_iter=1000), C=1, lbfgs",
                                                "folds": "5, StratifiedKFold (unshuffled)"}


def quality(probs, flagged, estimate):
    score = 1 - probs[np.arange(n), given]
    hit = int((flagged & wrong).sum())
    return {"auroc": round(roc_auc_score(wrong, score), 4), "ap": round(average_precision_score(wrong, score), 4),
            "flagged": int(flagged.sum()), "precision": round(hit / max(1, flagged.sum()), 4),
            "recall": round(hit / wrong.sum(), 4), "estimated_rate": round(estimate / n, 4),
            "true_rate": round(float(wrong.mean()), 4)}


pipelines = {"ours (kNN + linear, confident joint)": ours, "scikit-learn + cleanlab": sklearn_cleanlab}
times = {k: [] for k in pipelines}
got = {}
load = os.getloadavg()
for r in range(args.repeats):
    for name in (list(pipelines) if r % 2 == 0 else list(pipelines)[::-1]):  # alternate which goes first
        t = time.perf_counter()
        got[name] = pipelines[name]()
        times[name].append(round(time.perf_counter() - t, 2))
        print(f"  run {r + 1}: {name}: {times[name][-1]} s", flush=True)

from cleanlab.filter import find_label_issues  # noqa: E402 — only for the cross-over rows

(p_ours, f_ours, e_ours, params), (p_sk, f_sk, e_sk, _) = got.values()
f_cl_on_ours = find_label_issues(given, p_ours)
f_ours_on_sk, d_sk = L.flag_label_issues(p_sk, given)
rows = {
    "ours": {**quality(p_ours, f_ours, e_ours), "time_s": times[list(pipelines)[0]]},
    "scikit-learn + cleanlab": {**quality(p_sk, f_sk, e_sk), "time_s": times[list(pipelines)[1]]},
    "cleanlab's decision on our probabilities": quality(p_ours, f_cl_on_ours, int(f_cl_on_ours.sum())),
    "our decision on scikit-learn's probabilities": quality(p_sk, f_ours_on_sk, d_sk["estimated_wrong"]),
}
import torch  # noqa: E402 — for the thread count only

machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_at_start": [round(v, 2) for v in load]}
print(json.dumps(machine))
print("| pipeline | AUROC | AP | flagged | precision | recall | estimated rate (true) | time, s (each run) |")
print("|---|---|---|---|---|---|---|---|")
for k, v in rows.items():
    print(f"| {k} | {v['auroc']:.4f} | {v['ap']:.4f} | {v['flagged']} | {v['precision']:.3f} | {v['recall']:.3f} | "
          f"{v['estimated_rate']:.2%} ({v['true_rate']:.2%}) | {', '.join(map(str, v.get('time_s', ['—'])))} |")
a, b = (np.median(times[k]) for k in pipelines)
print(f"time ratio ours / scikit-learn+cleanlab (medians): {a / b:.2f}")
print("our linear C:", params["linear"]["C"], "chosen on", params["linear"]["C_rows"], "rows")
if args.json:
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "rows": rows, "params": params}, f, indent=1, default=str)
