"""What the data itself hides, from the vectors and labels already in the index: near-duplicates, train/test leaks,
likely label errors and outliers.

All of it is exact (no approximate index): similarities are float32 dot products of L2-normalized vectors, computed a
tile at a time so memory stays bounded at millions of vectors. Each finder returns plain arrays; `commit` stores the
results as columns of the catalog's `items` table, so `sql` and every `--where` can use them. Their names carry the
prefix `insight_` (`insight_dup_rank`, `insight_leak_of`, …), which no source column may take: a manifest column
`dup_rank` stays the source's own, and a computed column means the same on every index.
"""

from __future__ import annotations

import logging

import numpy as np

from embedsearch.core import progress
from embedsearch.core.vectors import l2_normalize
from embedsearch.evaluate.calibration import K as K_NEIGHBOURS
from embedsearch.evaluate.computed import column, load, store_columns, stored_columns  # noqa: F401 — re-exported
from embedsearch.evaluate.label_issues import (  # noqa: F401 — moved there; re-exported here
    OutOfFold,
    find_label_issues,
    label_issue_scores,
    out_of_fold,
    stratified_folds,
)
from embedsearch.query.exact import Bank, nearest_in, similar_pairs, topk

log = logging.getLogger(__name__)

# The cosine threshold of `--auto`'s fallback and of the exact pair search when a caller gives none (the commands
# calibrate each space instead: evaluate/calibration.py). Chosen on a generated calibration set (`python -m benchmarks insight
# --calibrate`, seed 1) of planted copies, JPEG re-encodes, crops, shifts, colour jitter and resizes among distinct
# images, embedded with `pixels:16`; the tests check recall and precision on a set drawn with another seed.
DUP_THRESHOLD = 0.95

def groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph over n items: a group number per item, -1 for items in no pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    in_pair = np.zeros(n, bool)
    in_pair[i] = in_pair[j] = True
    return np.where(in_pair, comp, -1)


def similarity_histogram(a: np.ndarray, n_sample: int = 2000, seed: int = 0, bins=None) -> dict:
    """Each sampled item's highest similarity to another item (nearest neighbour), binned: where a gap between
    'distinct' and 'copies' shows, the threshold goes."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(a), min(n_sample, len(a)), replace=False))
    bank = Bank(a)
    s, i = topk(bank, bank.rows(pick), 2, desc="duplicates: similarity profile")
    nn = np.where(i[:, 0] == pick, s[:, 1], s[:, 0])
    edges = np.asarray(bins if bins is not None else [-1, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99,
                                                      0.995, 0.999, 1.0001])
    counts, _ = np.histogram(nn, edges)
    return {"sampled": len(pick), "seed": seed, "nearest_similarity": nn,
            "bins": [(float(lo), float(hi), int(c)) for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]}


def auto_threshold(nn: np.ndarray, floor: float = 0.9) -> float:
    """A threshold from the nearest-neighbour similarity profile: the middle of the widest gap between sorted
    values above `floor` (copies sit near 1, distinct items below), else the default."""
    v = np.sort(nn[nn >= floor])
    if len(v) < 2:
        return DUP_THRESHOLD
    gaps = np.diff(v)
    g = int(np.argmax(gaps))
    return float((v[g] + v[g + 1]) / 2) if gaps[g] > 0.01 else DUP_THRESHOLD


def outlier_scores(x: np.ndarray, k: int = 10) -> np.ndarray:
    """1 − cosine to the k-th nearest other item: high for items far from everything."""
    bank = Bank(x)
    k = min(k, len(x) - 1)
    q = bank.whole if bank.whole is not None else l2_normalize(x)
    s, i = topk(bank, q, k + 1, desc="outliers: neighbours")
    keep = i != np.arange(len(x))[:, None]  # drop the item itself…
    keep[keep.all(axis=1), -1] = False  # …or, where an exact copy outranked it, the last entry
    return (1.0 - s[keep].reshape(len(x), k)[:, k - 1]).astype(np.float64)


# --------------------------------------------------------------------------------------------- on an index


# --------------------------------------------------------------------------------------------- calibrated spaces


def space_vectors(ix, sel: dict, space: str, images) -> tuple[np.ndarray, np.ndarray | None]:
    """The selection's vectors in `space` and, for the built-in space, its fine thumbnails (else None): "index"
    (the stored vectors) or "thumbs" (the built-in duplicate space, made from each item's image; an item whose
    image cannot be read gets zeros, which match nothing)."""
    from embedsearch.core.errors import EvalError
    from embedsearch.evaluate.calibration import FINE, THUMB_SIZE, fine_thumbs, thumb_vectors

    if space == "index":
        return ix.vectors(sel["id"]), None
    if space != "thumbs":
        raise EvalError(f"unknown space {space!r}: index or thumbs")
    if images is None:
        raise EvalError("--space thumbs needs the items' images, and this caller gave no way to read them")
    out = np.zeros((len(sel["id"]), 3 * THUMB_SIZE * THUMB_SIZE), np.float32)
    fine = np.zeros((len(out), 2, FINE, FINE, 3), np.uint8)
    missing = 0
    with progress.bar(len(out), "thumbs: images", unit="img") as bar:
        for n, (i, path) in enumerate(zip(sel["id"], sel["path"], strict=True)):
            img = images(int(i), path)
            if img is None:
                missing += 1
            else:
                out[n], fine[n] = thumb_vectors([img])[0], fine_thumbs([img])[0]
            bar.update()
    if missing == len(out):
        raise EvalError(f"--space thumbs: none of the {len(out)} items' images could be read (moved, or not in a "
                        "folder you indexed from)")
    if missing:
        log.warning("thumbs: %d of %d items' images could not be read; they match nothing", missing, len(out))
    return out, fine


def calibrated(ix, sel: dict, x: np.ndarray, space: str, images, seed: int = 0, fine: np.ndarray | None = None):
    """(Calibration or None, why not): the space calibrated on the selection (the bank), or the one-line reason it
    cannot be (no images, no backbone to embed copies with)."""
    from embedsearch.core.errors import EmbedsearchError
    from embedsearch.evaluate.calibration import calibrate, thumb_vectors
    from embedsearch.query.search import embed_images

    if images is None:
        return None, "no images to make calibration copies from"
    if space == "index":
        try:
            ix.backbone()
        except EmbedsearchError as e:
            return None, f"its backbone cannot embed copies here ({str(e).splitlines()[0]})"

        def embed(imgs):
            return embed_images(ix, imgs, batch=64)
    else:
        embed = thumb_vectors
    ids, paths = sel["id"], sel["path"]
    try:
        return calibrate(x, lambda p: images(int(ids[p]), paths[p]), embed, space=space, seed=seed,
                         fine=fine), None
    except EmbedsearchError as e:
        return None, str(e).splitlines()[0]


def _decision(cal, why: str | None, space: str) -> dict:
    """What a result records and prints about who decided."""
    if cal is None:
        return {"decided": False, "calibration": None,
                "note": f"space {space}: not calibrated — {why}; nothing flagged (give --threshold to decide "
                        "yourself" + (", or try --space thumbs" if space == "index" else "") + ")"}
    note = cal.line()
    if not cal.separable:
        note += "; nothing flagged" + (" — try --space thumbs (the built-in duplicate space) or an earlier "
                                       "--layer" if space == "index" else "")
    return {"decided": cal.separable, "calibration": cal.to_dict(), "note": note}


def calibrated_pairs(x: np.ndarray, cal, fine: np.ndarray | None = None, exact: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within x whose calibrated score passes the threshold, each once (i < j), from every item's K nearest
    other items: (i, j, score). `exact`: force exact or approximate candidates (default: by size)."""
    from embedsearch.evaluate.calibration import K, Scorer, ShiftScorer

    if cal.score == "shift-ncc":
        sc = ShiftScorer(x, fine, exact=exact)
        _, nb = sc.neighbours(x, K, exclude=np.arange(len(x)), desc="duplicates: neighbours")
        score = sc.rescored(fine, nb)
    else:
        sc = Scorer(x, cal.score, exact=exact)
        s, nb = sc.neighbours(x, K, exclude=np.arange(len(x)), desc="duplicates: neighbours")
        score = sc.scored(s)
    ok = nb >= 0  # an approximate search may return fewer than K
    score = np.where(ok, score, -np.inf)
    nb = np.where(ok, nb, 0)
    cal.candidates = sc.candidates
    i, c = np.nonzero(score >= cal.threshold)
    j = nb[i, c]
    a, b = np.minimum(i, j), np.maximum(i, j)
    best: dict[tuple[int, int], float] = {}
    for p, q, v in zip(a.tolist(), b.tolist(), score[i, c].tolist(), strict=True):
        if v > best.get((p, q), -np.inf):
            best[(p, q)] = v
    if not best:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    keys = np.array(list(best), np.int64)
    return keys[:, 0], keys[:, 1], np.array(list(best.values()), np.float32)


def find_duplicates(ix, where: str | None = None, threshold: float | None = None, auto: bool = False,
                    commit: bool = True, seed: int = 0, space: str = "index", images=None,
                    calibrate: bool = False) -> dict:
    """Groups of near-duplicate items among `where`, every pair with its score.

    Who decides: a given `threshold` (cosine, exact search over every pair), `auto` (the widest gap in the
    nearest-neighbour profile), `calibrate` (evaluate/calibration.py: synthetic copies of the items' own images,
    `images(id, path)`, against their ordinary nearest neighbours; a space that cannot separate copies, or cannot
    be calibrated, flags nothing and says so in `note`), else cosine ≥ DUP_THRESHOLD.

    Stored as `insight_dup_group` (the smallest id of the item's group) and `insight_dup_rank` (0 for that item,
    1, 2, … for the others in id order; NULL outside any group): `--where "coalesce(insight_dup_rank, 0) = 0"`
    keeps one item per group."""
    sel, x = load(ix, where, "duplicates")
    fine = None
    if space != "index":
        x, fine = space_vectors(ix, sel, space, images)
    profile = similarity_histogram(x, seed=seed)
    if not calibrate:
        how = "given" if threshold is not None else "auto: widest gap in the nearest-neighbour profile" if auto \
            else "default"
        thr = threshold if threshold is not None else auto_threshold(profile["nearest_similarity"]) if auto \
            else DUP_THRESHOLD
        i, j, s = similar_pairs(x, None, thr, desc="duplicates")
        decision = {"decided": True, "calibration": None, "score": "cosine",
                    "note": f"space {space}: cosine ≥ {thr:g} ({how}; not calibrated)"}
    else:
        cal, why = calibrated(ix, sel, x, space, images, seed, fine)
        decision = {**_decision(cal, why, space), "score": cal.score if cal else None}
        how, thr = "calibrated", (cal.threshold if cal else None)
        i, j, s = calibrated_pairs(x, cal, fine) if decision["decided"] else (np.zeros(0, np.int64),) * 2 + (
            np.zeros(0, np.float32),)
        if decision["decided"]:
            decision["candidates"] = cal.candidates
    xn = l2_normalize(x)
    cos = np.einsum("nd,nd->n", xn[i], xn[j]) if len(i) else np.zeros(0, np.float32)
    comp = groups(len(x), i, j)
    ids = sel["id"]
    group_id = np.full(len(x), -1, np.int64)
    rank = np.full(len(x), -1, np.int64)
    out_groups = []
    if (comp >= 0).any():
        members = np.flatnonzero(comp >= 0)
        order = members[np.lexsort((ids[members], comp[members]))]
        starts = np.r_[0, np.flatnonzero(np.diff(comp[order])) + 1, len(order)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            g = order[a:b]
            group_id[g] = ids[g[0]]
            rank[g] = np.arange(len(g))
            out_groups.append({"group": int(ids[g[0]]), "size": len(g), "ids": ids[g].tolist(),
                               "labels": sel["label"][g].tolist(), "splits": sel["split"][g].tolist()})
    pairs = [{"a": int(ids[a]), "b": int(ids[b]), "score": round(float(c), 6), "similarity": round(float(cs), 6),
              "a_label": sel["label"][a], "b_label": sel["label"][b], "a_split": sel["split"][a],
              "b_split": sel["split"][b], "group": int(group_id[a])}
             for a, b, c, cs in zip(i, j, s, cos, strict=True)]
    pairs.sort(key=lambda p: (-p["score"], p["a"], p["b"]))
    config = {"where": where, "space": space, "threshold": thr, "threshold_how": how, "n": len(ids), **decision,
              "how": ("exact float32 cosine of L2-normalized vectors, every pair" if decision["calibration"] is None
                      else f"each item's {K_NEIGHBOURS} nearest other items (exact float32), scored with the "
                           "calibrated score") + "; groups are connected components"}
    run_id = None
    if commit and decision["decided"]:
        run_id = store_columns(ix, "duplicates", ids, {
            "dup_group": ("BIGINT", [None if g < 0 else int(g) for g in group_id]),
            "dup_rank": ("INTEGER", [None if r < 0 else int(r) for r in rank])}, config)
    return {**config, "run_id": run_id, "pairs": pairs, "groups": sorted(out_groups, key=lambda g: -g["size"]),
            "profile": {k: v for k, v in profile.items() if k != "nearest_similarity"}}


def find_leaks(ix, train: str = "split = 'train'", test: str = "split = 'test'", threshold: float | None = None,
               commit: bool = True, seed: int = 0, space: str = "index", images=None, calibrate: bool = False
               ) -> dict:
    """Test items with a near-duplicate in train: each with its best train candidate. Who decides: as in
    `find_duplicates` (a cosine `threshold`, default DUP_THRESHOLD, or with `calibrate` the space's calibration on
    the train items; a space that cannot separate copies then flags nothing and says so). Stored as `insight_leak_of` (that train id) and
    `insight_leak_sim` (its cosine) on the test items (NULL when none)."""
    from embedsearch.core.errors import EvalError
    from embedsearch.evaluate.calibration import Scorer, ShiftScorer

    tr, xtr = load(ix, train, "leaks (train)")
    te, xte = load(ix, test, "leaks (test)")
    both = np.intersect1d(tr["id"], te["id"])
    if len(both):
        raise EvalError(f"--train and --test share {len(both)} items (e.g. id {both[0]}): make them disjoint")
    fine_tr = fine_te = None
    if space != "index":
        (xtr, fine_tr), (xte, fine_te) = space_vectors(ix, tr, space, images), space_vectors(ix, te, space, images)
    if not calibrate:
        thr = DUP_THRESHOLD if threshold is None else threshold
        i, j, s = nearest_in(xte, xtr, thr, desc="leaks")
        cos = s
        decision = {"decided": True, "calibration": None, "score": "cosine",
                    "note": f"space {space}: cosine ≥ {thr:g} ({'default' if threshold is None else 'given'}; "
                            "not calibrated)"}
    else:
        cal, why = calibrated(ix, tr, xtr, space, images, seed, fine_tr)
        decision = {**_decision(cal, why, space), "score": cal.score if cal else None}
        thr = cal.threshold if cal else None
        sc = None
        if decision["decided"] and cal.score == "shift-ncc":
            sc = ShiftScorer(xtr, fine_tr)
            best, score, _ = sc.best_fine(xte, fine_te, desc="leaks")
        elif decision["decided"]:
            sc = Scorer(xtr, cal.score)
            best, score, _ = sc.best(xte, desc="leaks")
        if sc is not None:
            decision["candidates"] = sc.candidates
        if decision["decided"]:
            i = np.flatnonzero(score >= cal.threshold)
            j, s = best[i], score[i]
            cos = np.einsum("nd,nd->n", l2_normalize(xte[i]), l2_normalize(xtr[j])) if len(i) else s
        else:
            i = j = np.zeros(0, np.int64)
            s = cos = np.zeros(0, np.float32)
    rows = [{"test_id": int(te["id"][a]), "train_id": int(tr["id"][b]), "score": round(float(c), 6),
             "similarity": round(float(cs), 6), "test_label": te["label"][a], "train_label": tr["label"][b],
             "test_path": te["path"][a], "train_path": tr["path"][b]}
            for a, b, c, cs in zip(i, j, s, cos, strict=True)]
    rows.sort(key=lambda r: (-r["score"], r["test_id"]))
    config = {"train": train, "test": test, "space": space, "threshold": thr,
              "threshold_how": "calibrated" if calibrate else "default" if threshold is None else "given", **decision,
              "n_train": len(tr["id"]), "n_test": len(te["id"]),
              "n_leaks": len(rows), "fraction": round(len(rows) / len(te["id"]), 6),
              "how": "for each test item its best train item (exact float32), kept when its score passes the "
                     "threshold"}
    run_id = None
    if commit and decision["decided"]:
        leak_of = np.full(len(te["id"]), None, object)
        leak_sim = np.full(len(te["id"]), None, object)
        leak_of[i], leak_sim[i] = tr["id"][j].tolist(), np.asarray(cos, float).tolist()
        run_id = store_columns(ix, "leaks", te["id"], {"leak_of": ("BIGINT", leak_of.tolist()),
                                                       "leak_sim": ("DOUBLE", leak_sim.tolist())}, config)
    return {**config, "run_id": run_id, "leaks": rows}


def find_outliers(ix, where: str | None = None, k: int = 10, commit: bool = True) -> dict:
    """Items ranked by 1 − cosine to their k-th nearest other item among `where` (uniqueness). Stored as
    `insight_outlier`. `k` must be below the number of items (the k-th other item must exist)."""
    from embedsearch.core.errors import EvalError

    sel, x = load(ix, where, "outliers")
    if not 1 <= k <= len(x) - 1:  # was clamped silently: the scores were another k's than the one recorded
        raise EvalError(f"outliers: -k {k} needs at least {k + 1} items (each item's {k}-th nearest other item), "
                        f"but `{where or 'all items'}` selects {len(x)}: use -k between 1 and {len(x) - 1}"
                        if k >= 1 else f"outliers: -k must be at least 1 (got {k})")
    score = outlier_scores(x, k)
    order = np.lexsort((sel["id"], -score))
    rows = [{"rank": r + 1, "id": int(sel["id"][p]), "score": round(float(score[p]), 6), "label": sel["label"][p],
             "split": sel["split"][p], "path": sel["path"][p]} for r, p in enumerate(order)]
    config = {"where": where, "k": k, "n": len(x),
              "how": "1 − cosine to the k-th nearest other item (exact float32 search)"}
    run_id = None
    if commit:
        run_id = store_columns(ix, "outliers", sel["id"],
                               {"outlier": ("DOUBLE", score.astype(float).tolist())}, config)
    return {**config, "run_id": run_id, "outliers": rows}
