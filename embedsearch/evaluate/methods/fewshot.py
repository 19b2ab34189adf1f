"""Few-shot curve: top-1 of prototypes and kNN with n train items per class, n = 1, 2, 4, …, all, over seeds."""

from __future__ import annotations

import numpy as np

from embedsearch.evaluate.methods.base import Method, register
from embedsearch.evaluate.methods.knn import ExactSims, knn_neighbours, knn_scores
from embedsearch.evaluate.methods.prototypes import prototype_scores, prototypes

FEWSHOT_SEEDS = 5
FEWSHOT_K = 20


def fewshot_curve(xtr, ytr, xte, yte, C, seed, knn_t, n_seeds: int = FEWSHOT_SEEDS, k: int = FEWSHOT_K) -> list[dict]:
    """Top-1 of prototypes and kNN (k neighbours, temperature knn_t) with n train items per class,
    n ∈ {1, 2, 4, …, all}, each over `n_seeds` seeded samples (one for all)."""
    largest = int(np.bincount(ytr).max())
    shots = [n for n in (2 ** i for i in range(20)) if n < largest] + [largest]
    curve = []
    for n in shots:
        acc_p, acc_k = [], []
        for s in range(n_seeds):
            rng = np.random.default_rng(seed + s)
            pick = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:n] for c in np.unique(ytr)])
            protos, has = prototypes(xtr[pick], ytr[pick], C)
            acc_p.append(float((prototype_scores(protos, has, xte).argmax(1) == yte).mean()))
            kk = min(k, len(pick))
            sims, idx = knn_neighbours(xtr[pick], xte, kk)
            sc = knn_scores(sims, ytr[pick][idx], kk, C, knn_t, ExactSims(xtr[pick], xte, idx), (1,))
            acc_k.append(float((sc.argmax(1) == yte).mean()))
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
