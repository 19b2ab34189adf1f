"""Few-shot curve: top-1 of prototypes and kNN with n train items per class, n = 1, 2, 4, …, all, over seeds."""

from __future__ import annotations

import numpy as np

from embedsearch.evaluate.methods.base import Method, register
from embedsearch.evaluate.methods.knn import ExactSims, knn_neighbours, knn_scores
from embedsearch.evaluate.methods.prototypes import prototype_scores, prototypes

FEWSHOT_SEEDS = 5
FEWSHOT_K = 20
BLOCK_BYTES = 2 ** 27  # test rows are scored in blocks of at most this many bytes of scores


def fewshot_curve(xtr, ytr, xte, yte, C, seed, knn_t, n_seeds: int = FEWSHOT_SEEDS, k: int = FEWSHOT_K) -> list[dict]:
    """Top-1 of prototypes and kNN (k neighbours, temperature knn_t) with n train items per class,
    n ∈ {1, 2, 4, …, all}, each over `n_seeds` seeded samples (one for all)."""
    rows = max(1, BLOCK_BYTES // (8 * C))
    largest = int(np.bincount(ytr).max())
    shots = [n for n in (2 ** i for i in range(20)) if n < largest] + [largest]
    curve = []
    for n in shots:
        acc_p, acc_k = [], []
        for s in range(n_seeds):
            rng = np.random.default_rng(seed + s)
            pick = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:n] for c in np.unique(ytr)])
            protos, has = prototypes(xtr[pick], ytr[pick], C)
            kk = min(k, len(pick))
            sims, idx = knn_neighbours(xtr[pick], xte, kk)
            labels = ytr[pick][idx]
            hit_p = hit_k = 0
            for a in range(0, len(yte), rows):  # (rows × classes) scores at a time, whatever the classes
                b = slice(a, a + rows)
                hit_p += int((prototype_scores(protos, has, xte[b]).argmax(1) == yte[b]).sum())
                sc = knn_scores(sims[b], labels[b], kk, C, knn_t, ExactSims(xtr[pick], xte[b], idx[b]), (1,))
                hit_k += int((sc.argmax(1) == yte[b]).sum())
            acc_p.append(hit_p / len(yte))
            acc_k.append(hit_k / len(yte))
            if n == largest:
                break  # all items: no sampling, one seed is the answer
        curve.append({"shots": n if n < largest else "all", "prototypes_mean": float(np.mean(acc_p)),
                      "prototypes_std": float(np.std(acc_p)), "knn_mean": float(np.mean(acc_k)),
                      "knn_std": float(np.std(acc_k)), "seeds": len(acc_p)})
    return curve


@register
class Fewshot(Method):
    name = "fewshot"
    kind = "curve"

    def curve(self, train, xte, yte, ctx) -> tuple[dict, list[dict]]:
        """(params, curve)."""
        params = {"seeds": FEWSHOT_SEEDS, "knn_k": FEWSHOT_K, "knn_T": ctx.knn_t,
                  "shots": "1, 2, 4, … per class, then all"}
        return params, fewshot_curve(train.x, train.y, xte, yte, train.n_classes, train.seed, ctx.knn_t)
