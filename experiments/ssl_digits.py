"""Self-supervised ViTs and supervised baselines on digits vs the pixels baseline: the studies' protocols on digits.

For each self-supervised method (MAE, InfoNCE, MAE+InfoNCE, the "video" MAE): `embedsearch pretrain digits` on the
train split (no labels). For each supervised baseline (the homework's three CNNs, the small ViT): `embedsearch
pretrain digits --method supervised --arch A` on the train split's labels, epochs by early stopping on a seeded
held-out 10 % of train. Then index digits with each checkpoint and evaluate frozen features (penultimate for the
supervised ones) with prototypes, weighted kNN and the linear probe:
  (a) the MNIST study's setting: classes 0, 1, 2 — 100 train images per class (the first 100 by id of the train
      split), and every test-split image of those classes (digits has ~45 per class there);
  (b) all 10 classes, the default 75/25 split.
Writes experiments/ssl_digits.md (next to this script).

    python experiments/ssl_digits.py [--epochs 40] [--sup-epochs 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
STUDY = {"mae": "99 %", "infonce": "98.67 %", "mae+infonce": "98 %"}  # fine-tuned, 3 MNIST classes × 100 images
STUDY_CNN = {"cnn-small": "76.98 %", "cnn-bn": "76.27 %", "cnn-deep": "88.76 %"}  # CIFAR-10 test, the homework


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--sup-epochs", type=int, default=60, help="supervised: at most this many epochs")
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import embedsearch as es
    from embedsearch.sources.datasets import open_source
    from embedsearch.train.pretrain import PretrainConfig, pretrain
    from embedsearch.train.supervised import SupervisedConfig, train_supervised

    root = Path(tempfile.mkdtemp())
    src = open_source("digits")
    three = [r for r in src.records if r.label in ("0", "1", "2")]
    train3 = [r.id for c in ("0", "1", "2") for r in sorted((r for r in three if r.split == "train" and r.label == c),
                                                            key=lambda r: r.id)[:100]]
    test3 = [r.id for r in three if r.split == "test"]
    sel3 = (f"id IN ({', '.join(map(str, train3))})", f"id IN ({', '.join(map(str, test3))})")
    methods = ["prototypes", "knn", "linear"]
    rows, timings = [], {}
    backbones = {"pixels": "pixels:8"}
    for m in ("mae", "infonce", "mae+infonce", "video-mae"):
        t0 = time.perf_counter()
        ck = root / f"ck-{m.replace('+', '-')}"
        res = pretrain(src, PretrainConfig(method=m, epochs=args.epochs, seed=args.seed), ck, device="cpu",
                       progress=False)
        timings[m] = (time.perf_counter() - t0, res.losses[0], res.losses[-1])
        backbones[m] = f"ckpt:{ck}"
    sup = {}
    for arch in ("cnn-small", "cnn-bn", "cnn-deep", "vit"):
        t0 = time.perf_counter()
        ck = root / f"ck-sup-{arch}"
        res = train_supervised(src, SupervisedConfig(arch=arch, epochs=args.sup_epochs, patience=args.patience,
                                                     seed=args.seed), ck, device="cpu", progress=False)
        sup[arch] = (time.perf_counter() - t0, res.epochs, res.best_epoch, max(res.heldout_accuracy))
        backbones[f"supervised {arch}"] = f"ckpt:{ck}"
    for name, bb in backbones.items():
        iname = name.replace("+", "-").replace(" ", "-")
        es.build_index("digits", name=iname, backbone=bb, root=str(root), num_workers=0,
                       progress=False, device="cpu", precision="fp32")
        ix = es.open_index(iname, root)
        for setting, (tr, te) in (("3 classes × 100", sel3), ("10 classes", ("split = 'train'", "split = 'test'"))):
            run = es.evaluate_index(ix, methods=methods, train=tr, test=te, seed=args.seed)
            got = {(r.method, r.data["params"].get("vote")): r.data for r in run.results}
            rows.append({"backbone": name, "setting": setting, "n_train": run.results[0].data["train"]["n"],
                         "n_test": run.results[0].data["test"]["n"],
                         "prototypes": got[("prototypes", None)]["metrics"]["top1"],
                         "knn": got[("knn", None)]["metrics"]["top1"],
                         "linear": got[("linear", None)]["metrics"]["top1"],
                         "linear_C": got[("linear", None)]["params"]["C"]})
            ix = es.open_index(iname, root)
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = ["# Self-supervised ViTs and supervised baselines on digits vs the pixels baseline", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores; command: "
             f"`python experiments/ssl_digits.py --epochs {args.epochs} --seed {args.seed}`",
             f"- pretraining: `embedsearch pretrain digits --method M --epochs {args.epochs}` on the train split only "
             "(1,347 images, no labels); ViT depth 4, width 64, 4 heads, 8×8 input, patch 2; MAE mask ratio 0.5; "
             "InfoNCE T = 0.1 on crop + affine views; video-MAE: each image as 3 frames, tubelet 1, mask ratio "
             "0.5, L1 on the masked tubelets; AdamW 1e-3, cosine schedule, seed 0",
             f"- supervised: `embedsearch pretrain digits --method supervised --arch A --epochs {args.sup_epochs} "
             f"--patience {args.patience}` on the train split's labels (the homework's Mish CNN, the same with "
             "BatchNorm, the deeper BatchNorm+Mish CNN, and the ViT above with a classifier); crop + affine "
             "augmentation for training only; epochs by early stopping on a seeded held-out 10 % of train, the best "
             "held-out epoch kept; AdamW 1e-3, weight decay 5e-4, cosine schedule, seed 0",
             "- evaluation: frozen CLS features (supervised: the classifier's input); prototypes (cosine), weighted kNN (k = 20, T = 0.07), logistic-"
             "regression probe (C on a held-out 10 % of train); top-1 on the test selection, %", "",
             "| backbone | setting | train / test | prototypes | kNN k=20 | linear | linear C |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['setting']} | {r['n_train']} / {r['n_test']} | {pct(r['prototypes'])} | "
                     f"{pct(r['knn'])} | {pct(r['linear'])} | {r['linear_C']:.3g} |")
    lines += ["", "Pretraining time and loss (first → last epoch):", ""]
    for m, (t, a, b) in timings.items():
        lines.append(f"- {m}: {t:.0f} s, loss {a:.4f} → {b:.4f}")
    lines += ["", "Supervised training (epochs run, best held-out epoch, its held-out accuracy):", ""]
    for a, (t, n, best, acc) in sup.items():
        lines.append(f"- {a}: {t:.0f} s, {n} epochs, best epoch {best}, held-out {pct(acc)} %")
    lines += ["", "The MNIST study fine-tuned its ViTs on 3 MNIST classes × 100 images and reported "
              + ", ".join(f"{m} {v}" for m, v in STUDY.items())
              + " — fine-tuned accuracy on 28×28 MNIST, not frozen features on 8×8 digits: a reference point, not a "
              "like-for-like comparison. The homework's CNNs reached "
              + ", ".join(f"{a} {v}" for a, v in STUDY_CNN.items())
              + " on CIFAR-10's test set (classifier accuracy, with its training augmentation applied to test too); "
              "the rows above are frozen penultimate features on digits.", ""]
    (HERE / "ssl_digits.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
