"""`embedsearch index-quality`: how an index's FAISS file compares with exact search on the same vectors — recall,
latency, bytes — and what the approximation does to the weighted kNN accuracy (docs/protocols.md, "Approximate-index quality")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from embedsearch.core.errors import QueryError
from embedsearch.evaluate.methods.knn import KNN_T, knn_scores
from embedsearch.query.ann import RECALL_R, latency, leave_one_out, loo_recalls
from embedsearch.store import faiss_index as vindex
from embedsearch.store.parts import iter_parts


def quality(ix, *, n_queries: int = 1000, seed: int = 1234, k_knn: int = 20, train: str = "split = 'train'",
            test: str = "split = 'test'") -> dict:
    """How the index's FAISS file compares with exact search on the same vectors (see the module docstring)."""
    index = ix.faiss
    paths = ix.part_paths
    n, d = int(index.ntotal), ix.dim

    def chunks() -> Iterator:
        return iter_parts(paths)

    if n < 2:
        raise QueryError(f"index {ix.name} has {n} vectors: nothing to measure")
    rmax = max(RECALL_R)
    q_ids, q, gt = leave_one_out(chunks, n, n_queries=n_queries, seed=seed)
    fa = ix.manifest.faiss.to_dict()
    out = {"index": ix.name, "factory": fa.get("factory"), "params": fa.get("params") or {}, "n": n, "dim": d,
           "queries": {"n": len(q_ids), "seed": seed, "sampled_from": "the index's own vectors; each query's own id "
                       "left out of exact and approximate results"},
           "recall": loo_recalls(index, q_ids, q, gt), "latency_ms": latency(index, q, rmax),
           "bytes": ix.layout.faiss.stat().st_size}
    lists = ix.manifest.faiss.lists_file
    if lists:
        out["bytes"] += (ix.layout.dir / lists).stat().st_size
        out["storage"] = f"on disk: {lists} (IVF lists, mapped) + index.faiss (quantizer)"
        out["drift"] = _drift(index, chunks, n, fa["storage"])
    out["bytes_per_vector"] = round(out["bytes"] / n, 2)
    tr, te = ix.select(train), ix.select(test)
    if (tr["class_index"] >= 0).any() and len(te["id"]):
        tr_mask, te_mask = tr["class_index"] >= 0, te["class_index"] >= 0
        bank_ids, lab = tr["id"][tr_mask], tr["class_index"][tr_mask]
        te_ids, y = te["id"][te_mask], te["class_index"][te_mask]
        n_classes = len(ix.classes())
        qv = ix.vectors(te_ids)
        label_of = dict(zip(bank_ids.tolist(), lab.tolist(), strict=False))
        kk = min(k_knn, len(bank_ids))
        es, ei = vindex.exact_topk(((bank_ids, ix.vectors(bank_ids)),), qv, kk)
        as_, ai = vindex.search(index, qv, kk, subset=bank_ids)
        acc = {}
        for name, (sc, nb) in {"exact": (es, ei), "approximate": (as_, ai)}.items():
            nb = np.asarray(nb)
            sc, nb = vindex.pad_to(sc, nb, kk)  # an approximate index can return fewer than k hits for a query
            labels = np.vectorize(lambda i: label_of.get(int(i), 0))(nb)
            sc = np.where(nb >= 0, sc, -np.inf)
            pred = knn_scores(np.nan_to_num(sc, neginf=-1e9), labels, kk, n_classes, KNN_T).argmax(1)
            acc[name] = round(float((pred == y).mean() * 100), 3)
            acc[f"{name}_pred"] = pred
        agree = float((acc.pop("exact_pred") == acc.pop("approximate_pred")).mean() * 100)
        out["knn"] = {"method": f"weighted kNN (DINOv2), k={kk}, T={KNN_T}", "train": train, "test": test,
                      "n_train": len(bank_ids), "n_test": len(te_ids), "top1_exact": acc["exact"],
                      "top1_approximate": acc["approximate"],
                      "delta_points": round(acc["approximate"] - acc["exact"], 3),
                      "same_prediction_pct": round(agree, 3)}
    return out


def _drift(index, chunks, n: int, storage: dict) -> dict | None:
    """Recall now against recall when the quantizer was trained, on the same leave-one-out queries (those still
    indexed): how far `--add`s have moved the data away from the trained centroids; `--retrain` resets it."""
    tr = storage.get("trained") or {}
    if not tr.get("query_ids"):
        return None
    q_ids, q, gt = leave_one_out(chunks, n, q_ids=np.asarray(tr["query_ids"], np.int64))
    now = loo_recalls(index, q_ids, q, gt)
    return {"queries": len(q_ids), "vectors_at_training": tr.get("vectors"), "vectors_now": n,
            "recall_at_training": tr["recall"], "recall_now": now,
            "delta_10-recall@10": round(now["10-recall@10"] - tr["recall"]["10-recall@10"], 4),
            "how": "the same leave-one-out queries (ids kept at training, seed = build seed + 2), same nprobe; "
                   "`embedsearch index NAME --add --retrain` trains the quantizer again"}
