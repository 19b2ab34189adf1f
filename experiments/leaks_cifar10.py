"""Calibrated leak detection against human judgments: CIFAR-10's test items that ciFAIR's authors judged to have a
near-duplicate in the training set (286 of 10,000), per space and per score, at the threshold each space's own
calibration chooses (evaluate/calibration.py). The reading: docs/benchmarks/insight_real.md.

    python -m benchmarks.cifar10_truth --snapshots DIR --out /work/data/cifar10      # images + the human lists
    embedsearch index /work/data/cifar10 -n c10-r20 -b py:tests/data/real/models/akamaster_resnet.py:resnet20 \
        --weights tests/data/real/akamaster_resnet20/resnet20-12fca82f.th --image-size 32 \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --layer linear:input --dtype float32 --precision fp32
    python experiments/leaks_cifar10.py c10-r20 /work/data/cifar10/leaks_truth.csv index,thumbs16,thumbs8

An experiment (it needs the 60,000 JPEGs and the human list, which the repository cannot hold), not a benchmark of
the harness: it prints, per space, the calibration line and, per score, AP over all test items and precision /
recall / share flagged at the calibrated threshold.
"""
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score

from embedsearch.core import progress
from embedsearch.evaluate import calibration as C
from embedsearch.query.search import embed_images
from embedsearch.reader import Index

progress.ENABLED = False

name = sys.argv[1]
truth_file = sys.argv[2] if len(sys.argv) > 2 else None
ix = Index.open(name)
root = Path(ix.manifest.source["root"])
sel = ix.select()
ids, paths, split = sel["id"], sel["path"], sel["split"]
tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
X = ix.vectors(ids)
print(name, X.shape, len(tr), len(te), root)

def img(p):
    with Image.open(root / paths[p]) as im:
        return im.convert("RGB")

def space_vectors(space):
    if space == "index":
        return X, lambda ims: embed_images(ix, ims, batch=64)
    size = int(space.removeprefix("thumbs"))
    cache = Path(f"{name}-thumbs{size}.npy")  # in the working directory
    if cache.exists():
        V = np.load(cache)
    else:
        t = time.time()
        V = C.thumb_vectors([img(p) for p in range(len(ids))], size)
        np.save(cache, V)
        print("thumbs", size, round(time.time() - t, 1), "s")
    return V, lambda ims: C.thumb_vectors(ims, size)

truth = None
if truth_file:
    pos = {p: n for n, p in enumerate(paths)}
    truth = {}
    with open(truth_file) as f:
        for r in csv.DictReader(f):
            truth[pos[r["test_path"]]] = (pos[r["train_path"]], r.get("category"))
    print("human-judged leaks:", len(truth), f"{len(truth)/len(te):.2%}")

for space in sys.argv[3].split(",") if len(sys.argv) > 3 else ["index", "thumbs16"]:
    V, embed = space_vectors(space)
    t = time.time()
    cal = C.calibrate(V[tr], lambda p: img(tr[p]), embed, space=space, sample=250, seed=0)
    print(f"== {space}: calibration {time.time() - t:.1f}s")
    print(cal.line())
    print(json.dumps(cal.by_score))
    print(cal.by_transform)
    if truth is None:
        continue
    y = np.array([p in truth for p in te])
    for score in C.SCORES:
        sc = C.Scorer(V[tr], score)
        j, s, cos = sc.best(V[te])
        ap = average_precision_score(y, s)
        thr = cal.by_score[score]["threshold"]
        flag = s >= thr
        right = np.array([truth.get(p, (-1,))[0] == tr[jj] for p, jj in zip(te, j)])
        tp = (flag & y).sum()
        print(f"  {score:15s} AP {ap:.3f}  at calibrated thr {thr:.4f}: flagged {flag.mean():.2%}  P {tp/max(1,flag.sum()):.3f} R {tp/y.sum():.3f}  (pair right among TP {(flag&y&right).sum()/max(1,tp):.2f})")
