"""Can this embedding space tell a copy of an image from its ordinary nearest neighbour? Measured, not assumed.

A fixed cosine threshold means different things in different spaces: in a classifier's penultimate space every
cat is close to every other cat, and a threshold that catches re-encoded copies also flags half the test set. So
before it judges duplicates, each space is calibrated on the data it holds:

- positives: seeded synthetic copies of a sample of the items' own images (JPEG re-encode, a 1–2 px shift, a small
  crop resized back, brightness/contrast), embedded through the space's own backbone and preprocessing, each scored
  against the whole bank (which holds its original);
- negatives: a (larger) sample of the items, each scored against its nearest *other* item.

For each candidate score the calibration measures the AUROC of copies against ordinary nearest neighbours; the
score with the highest AUROC wins, and its threshold lets `FPR` of the ordinary items through. The space is called
separable only when that AUROC reaches `MIN_AUROC`: otherwise the commands say so in one line and decide nothing.
The scores:

- `cosine`: the plain cosine of L2-normalized vectors;
- `centred`: cosine after subtracting the bank's mean vector (a ReLU feature space has every cosine near 1 until
  its common direction is removed);
- `margin` / `centred-margin`: that similarity minus the query's similarity to its `K`-th nearest other item — a
  copy stands out from the query's other neighbours, an ordinary neighbour does not, whatever the local density;
- `shift-ncc` (the built-in space only): each query's K nearest candidates re-scored by the normalized
  cross-correlation of FINE×FINE thumbnails, the best over shifts of up to SHIFT pixels and a ZOOM centre crop of
  either side (measured on CIFAR-10's synthetic copies: AUROC 0.978 with shifts alone, 0.996 with the zoom; crops
  recovered 32 % → 84 %).

The negatives of a real dataset contain its real near-duplicates (a few per cent of CIFAR's test set): the
threshold taken at their upper tail would be too strict where they are many, so negatives that score like a
typical synthetic copy (at or above the copies' median) are left out of the null as the dataset's own copies. `FPR` and `MIN_AUROC` were set on
a development list of human judgments (ciFAIR's 39 duplicate pairs inside CIFAR-10's test set) and the synthetic
copies only; the train/test leak list, judged by the same people, is kept for the report (docs/benchmarks/
insight_real.md), where the measured precision and recall come from.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedsearch.core.vectors import l2_normalize
from embedsearch.query.ann import PAIRS_EXACT_UP_TO, neighbour_index
from embedsearch.query.exact import Bank, topk

SCORES = ("cosine", "centred", "margin", "centred-margin")
K = 10  # the margin's reference neighbour: a group of up to K − 1 copies still stands out from the K-th item
FPR = 0.02  # the share of ordinary items whose nearest neighbour may pass the threshold
MIN_AUROC = 0.8  # copies vs ordinary nearest neighbours: below this, the space cannot separate copies
TRANSFORMS = ("jpeg", "shift", "crop", "light")
THUMB_SIZE = 16


# --------------------------------------------------------------------------------------------- synthetic copies


def make_copies(img, rng: np.random.Generator) -> list[tuple[str, object]]:
    """The mild edits a copy goes through (re-upload, re-encode, re-crop, re-touch), one of each, seeded: (name,
    RGB PIL image) in TRANSFORMS order."""
    from PIL import Image, ImageEnhance

    img = img.convert("RGB")
    w, h = img.size
    out = []
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(60, 86)))
    out.append(("jpeg", Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    a = np.asarray(img)
    dy, dx = (int(rng.integers(1, 3)) * int(rng.choice([-1, 1])) for _ in range(2))
    pad = np.pad(a, ((2, 2), (2, 2), (0, 0)), mode="edge")  # shifted content, edges repeated (not wrapped)
    out.append(("shift", Image.fromarray(pad[2 + dy:2 + dy + h, 2 + dx:2 + dx + w])))
    f = float(rng.uniform(0.85, 0.95))  # keep 85–95 % of each side, resized back
    cw, ch = max(1, round(w * f)), max(1, round(h * f))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out.append(("crop", img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)))
    lit = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
    out.append(("light", ImageEnhance.Contrast(lit).enhance(float(rng.uniform(0.85, 1.15)))))
    return out


def thumb_vectors(images: Sequence, size: int = THUMB_SIZE) -> np.ndarray:
    """The built-in duplicate space: each image as a size×size colour thumbnail (box-filtered), its own mean
    removed and scaled to unit norm, so the cosine of two is their normalized cross-correlation — blind to
    brightness and contrast, sharp for the same picture, and cheap for any dataset with images."""
    from PIL import Image

    out = np.empty((len(images), 3 * size * size), np.float32)
    for n, img in enumerate(images):
        a = np.asarray(img.convert("RGB").resize((size, size), Image.BOX), np.float32).ravel()
        a -= a.mean()
        out[n] = a / max(float(np.linalg.norm(a)), 1e-6)
    return out


FINE = 32  # the re-scoring thumbnail's side
SHIFT = 2  # the largest shift (pixels of the fine thumbnail, each axis) the re-scoring undoes
ZOOM = 0.9  # the centre crop (share of each side) of the second fine thumbnail: a re-crop zooms in by up to ~1/ZOOM


def fine_thumbs(images: Sequence) -> np.ndarray:
    """Each image as two FINE×FINE colour thumbnails (uint8, n × 2 × FINE × FINE × 3): the whole image, and its
    centre ZOOM crop, for `fine_score`."""
    from PIL import Image

    out = np.empty((len(images), 2, FINE, FINE, 3), np.uint8)
    for n, img in enumerate(images):
        img = img.convert("RGB")
        w, h = img.size
        cw, ch = max(1, round(w * ZOOM)), max(1, round(h * ZOOM))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out[n, 0] = np.asarray(img.resize((FINE, FINE), Image.BILINEAR))
        out[n, 1] = np.asarray(img.crop((x0, y0, x0 + cw, y0 + ch)).resize((FINE, FINE), Image.BILINEAR))
    return out


def fine_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise re-score of two stacks of `fine_thumbs`: the best `shift_ncc` of the whole images, and of either
    one's zoomed centre against the other whole — a copy re-cropped (zoomed in) or shifted by a few pixels still
    correlates with its original."""
    return np.maximum.reduce([shift_ncc(a[:, 0], b[:, 0]), shift_ncc(a[:, 1], b[:, 0]), shift_ncc(a[:, 0], b[:, 1])])


def shift_ncc(a: np.ndarray, b: np.ndarray, shift: int = SHIFT, rows: int = 2048) -> np.ndarray:
    """Row-wise normalized cross-correlation of two stacks of fine thumbnails, the best over every shift of up to
    `shift` pixels along each axis (on the overlap): a re-crop or a re-centring moves the picture a few pixels,
    which a plain correlation of thumbnails punishes and this undoes."""
    out = np.full(len(a), -1.0, np.float32)
    for r0 in range(0, len(a), rows):
        A, B = a[r0:r0 + rows].astype(np.float32), b[r0:r0 + rows].astype(np.float32)
        for dy in range(-shift, shift + 1):
            for dx in range(-shift, shift + 1):
                u = A[:, max(0, dy):FINE + min(0, dy), max(0, dx):FINE + min(0, dx)].reshape(len(A), -1)
                v = B[:, max(0, -dy):FINE + min(0, -dy), max(0, -dx):FINE + min(0, -dx)].reshape(len(B), -1)
                u = u - u.mean(axis=1, keepdims=True)
                v = v - v.mean(axis=1, keepdims=True)
                den = np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-6)
                np.maximum(out[r0:r0 + rows], np.einsum("nd,nd->n", u, v) / den, out=out[r0:r0 + rows])
    return out


# --------------------------------------------------------------------------------------------- scores


class Scorer:
    """A bank of vectors prepared for one score: queries get their best candidate in the bank and its score."""

    def __init__(self, x: np.ndarray, score: str, mean: np.ndarray | None = None, exact: bool | None = None):
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}: one of {', '.join(SCORES)}")
        self.score = score
        self.centred = score.startswith("centred")
        self.margin = score.endswith("margin")
        x = np.asarray(x, np.float32)
        self.mean = (x.mean(axis=0) if mean is None else mean).astype(np.float32) if self.centred else None
        self.bank = Bank(self.prepare(x))
        self.n = len(x)
        # past PAIRS_EXACT_UP_TO items the candidates come from an approximate search tuned to find 99 % of the
        # exact K nearest (measured; `candidates` records it); the scores of what it finds are exact
        self.exact = self.n <= PAIRS_EXACT_UP_TO if exact is None else exact
        self.graph = None

    def prepare(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float32)
        return l2_normalize(q - self.mean if self.centred else q)

    def neighbours(self, q: np.ndarray, k: int, exclude: np.ndarray | None = None, desc: str = "neighbours"):
        """(similarities, bank positions), k per query, best first; `exclude`: one bank position per query that
        may not be its own neighbour (the query itself, when the queries are bank items)."""
        extra = 0 if exclude is None else 1
        if not self.exact and self.graph is None:
            self.graph = neighbour_index(self.bank.whole if self.bank.whole is not None else
                                         self.prepare_bank_rows(np.arange(self.n)), K)
            self.exact = self.graph is None  # the target not reached: exact search
        if self.graph is not None:
            s, i = self.graph.search(self.prepare(q), min(k + extra, self.n))
        else:
            s, i = topk(self.bank, self.prepare(q), min(k + extra, self.n), desc=desc)
        if exclude is not None:
            keep = i != np.asarray(exclude)[:, None]
            keep[keep.all(axis=1), -1] = False  # itself beyond the list (a tie): drop the last instead
            s = s[keep].reshape(len(q), -1)
            i = i[keep].reshape(len(q), -1)
        return s, i

    @property
    def candidates(self) -> dict:
        """How the candidates were found: exact search, or the approximate graph with its measured recall."""
        return self.graph.to_dict() if self.graph is not None else {"kind": "exact"}

    def scored(self, s: np.ndarray) -> np.ndarray:
        """Each neighbour's score given its query's similarity row (n × k, best first)."""
        if not self.margin:
            return s
        ref = s[:, min(K, s.shape[1]) - 1][:, None]  # the K-th neighbour (or the farthest one there is)
        return s - ref

    def best(self, q: np.ndarray, exclude: np.ndarray | None = None, desc: str = "candidates"):
        """(bank position, score, cosine of the prepared vectors) of each query's nearest bank item."""
        s, i = self.neighbours(q, K if self.margin else 1, exclude, desc)
        return i[:, 0], self.scored(s)[:, 0], s[:, 0]

    def pair_scores(self, q: np.ndarray, j: np.ndarray) -> np.ndarray:
        """The score of given (query, bank position) pairs — a copy against its own original."""
        qn = self.prepare(q)
        bn = self.prepare_bank_rows(j)
        s = np.einsum("nd,nd->n", qn, bn)
        if not self.margin:
            return s
        ss, _ = self.neighbours(q, K, desc="calibration: copies' neighbours")
        return s - ss[:, min(K, ss.shape[1]) - 1]

    def prepare_bank_rows(self, j: np.ndarray) -> np.ndarray:
        if self.bank.whole is not None:
            return self.bank.whole[np.asarray(j)]
        return self.bank.rows(np.asarray(j))


class ShiftScorer(Scorer):
    """The built-in space's re-scoring: candidates by cosine of the coarse thumbnails (each query's K nearest),
    scored by `fine_score` of the fine ones; the best candidate is the one with the highest re-score."""

    def __init__(self, x: np.ndarray, fine: np.ndarray, exact: bool | None = None):
        super().__init__(x, "cosine", exact=exact)
        self.score, self.fine = "shift-ncc", fine

    def rescored(self, q_fine: np.ndarray, nb: np.ndarray) -> np.ndarray:
        return np.stack([fine_score(q_fine, self.fine[nb[:, k]]) for k in range(nb.shape[1])], axis=1)

    def best_fine(self, q: np.ndarray, q_fine: np.ndarray, exclude: np.ndarray | None = None,
                  desc: str = "candidates"):
        s, nb = self.neighbours(q, K, exclude, desc)
        rs = self.rescored(q_fine, nb)
        arg = rs.argmax(axis=1)
        r = np.arange(len(q))
        return nb[r, arg], rs[r, arg], s[r, arg]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive outscores a negative), ties counting half (the Mann–Whitney statistic)."""
    from scipy.stats import rankdata

    r = rankdata(np.r_[pos, neg])
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


# --------------------------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    space: str  # "index" (the index's own vectors) or "thumbs" (the built-in duplicate space)
    score: str
    threshold: float
    recall: float  # of synthetic copies at the threshold
    fpr: float  # measured share of ordinary items' nearest neighbours at or above it
    auroc: float
    separable: bool
    by_score: dict
    by_transform: dict
    sample: int
    negatives: int
    seed: int
    candidates: dict | None = None  # set by the pair finders: exact, or the approximate search's measured recall

    def line(self) -> str:
        """One line for every result the calibration decides."""
        head = (f"space {self.space}: copies vs nearest other items AUROC {self.auroc:.3f}; score {self.score}, "
                f"threshold {self.threshold:.4g} (false-positive rate {self.fpr:.2%} on {self.negatives:,} items, "
                f"recall {self.recall:.1%} of {self.sample * len(TRANSFORMS):,} synthetic copies, seed {self.seed})")
        return head if self.separable else (
            f"{head} — this space cannot tell copies from ordinary neighbours (AUROC below {MIN_AUROC})")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def calibrate(x: np.ndarray, images: Callable[[int], object], embed: Callable[[list], np.ndarray], *,
              space: str = "index", sample: int = 250, negatives: int = 2000, seed: int = 0, fpr: float = FPR,
              scores: Sequence[str] = SCORES, fine: np.ndarray | None = None) -> Calibration:
    """Calibrate the space of bank `x` (n × d, one row per item). `images(position)` gives an item's RGB image or
    None (unreadable: another is drawn); `embed(list of images)` puts images into this space. `fine`: the bank's
    fine thumbnails (the built-in space), which adds the `shift-ncc` re-score to the candidates."""
    from embedsearch.core.errors import EvalError

    rng = np.random.default_rng(seed)
    n = len(x)
    if n < K + 2:
        raise EvalError(f"calibration needs at least {K + 2} items to compare copies with neighbours; this has {n}")
    pos_items, imgs, names = [], [], []
    for p in rng.permutation(n):
        if len(pos_items) == min(sample, n):
            break
        img = images(int(p))
        if img is None:
            continue
        for name, c in make_copies(img, rng):
            imgs.append(c)
            names.append(name)
        pos_items.append(int(p))
    if len(pos_items) < 10:
        raise EvalError(f"calibration: only {len(pos_items)} of the items' images could be read (at least 10 "
                        "needed to make copies from)")
    copies = embed(imgs)
    originals = np.repeat(np.asarray(pos_items), len(TRANSFORMS))
    neg_items = np.sort(rng.choice(n, min(negatives, n), replace=False))
    names = np.asarray(names)
    by_score, best = {}, None
    copies_fine = fine_thumbs(imgs) if fine is not None else None
    for score in [*scores, *(["shift-ncc"] if fine is not None else [])]:
        if score == "shift-ncc":
            sc = ShiftScorer(x, fine)
            pos = fine_score(copies_fine, fine[originals])
            top, _, _ = sc.best_fine(copies, copies_fine, desc="calibration (shift-ncc): copies")
            _, neg, _ = sc.best_fine(x[neg_items], fine[neg_items], exclude=neg_items,
                                     desc="calibration (shift-ncc): nearest others")
        else:
            sc = Scorer(x, score)
            pos = sc.pair_scores(copies, originals)
            top, _, _ = sc.best(copies, desc=f"calibration ({score}): copies")
            _, neg, _ = sc.best(x[neg_items], exclude=neg_items, desc=f"calibration ({score}): nearest others")
        # the null is ordinary neighbours: an item whose nearest other scores like a typical copy (at or above the
        # copies' median) is taken for one of the dataset's own duplicates, not an ordinary neighbour
        null = neg[neg < np.median(pos)] if (neg < np.median(pos)).any() else neg
        thr = float(np.quantile(null, 1 - fpr, method="higher")) if len(null) else float("inf")
        thr = float(np.nextafter(np.float32(thr), np.float32(np.inf)))  # strictly above that ordinary item
        hit = (pos >= thr) & (top == originals)  # the copy's best candidate is its original, above threshold
        row = {"auroc": round(auroc(pos, neg), 4), "threshold": thr, "recall": round(float(hit.mean()), 4),
               "fpr": round(float((null >= thr).mean()), 5), "null_excluded": int(len(neg) - len(null)),
               "recall_at_1": round(float((top == originals).mean()), 4),
               "by_transform": {t: round(float(hit[names == t].mean()), 4) for t in TRANSFORMS}}
        by_score[score] = row
        if best is None or (row["auroc"], row["recall"]) > (by_score[best]["auroc"], by_score[best]["recall"]):
            best = score
    b = by_score[best]
    return Calibration(space=space, score=best, threshold=b["threshold"], recall=b["recall"], fpr=b["fpr"],
                       auroc=b["auroc"], separable=b["auroc"] >= MIN_AUROC,
                       by_score={s: {k: v for k, v in r.items() if k != "by_transform"} for s, r in by_score.items()},
                       by_transform=b["by_transform"], sample=len(pos_items), negatives=len(neg_items), seed=seed)
