"""Approximate search: choose a FAISS index for a size and a memory budget, tune it to a recall target on held-out
queries, and measure what the approximation costs (docs/protocols.md, "Approximate-index quality").

Tuning (`--index auto`) holds a seeded sample of the vectors out of the index while it tunes, so the tuning queries
are new to the index as real queries are, and adds them afterwards. `index-quality` cannot take items out of a built
index: its queries are indexed items left out of their own results ("leave-one-out": a query's own id is dropped from
both the exact and the approximate top-k), drawn with another seed. Graph indexes (HNSW) find neighbours of their own
items more easily than of new vectors, so for them leave-one-out recall is an upper bound (docs/benchmarks/search.md
measures both).

The candidates follow FAISS's guidelines (wiki "Guidelines to choose an index"): exact `Flat` while it is cheap,
then `IVF{K},Flat` with K ≈ 4·√n, `HNSW32` when the vectors plus graph fit the budget, `IVF{K},SQ8` (4× smaller),
`IVF{K},PQ{m}x4fs` (4-bit fast-scan PQ, up to 8× smaller). IVF-Flat comes before HNSW because on the 2-core CI
machine it was faster at the same recall, for batches and single queries alike (docs/benchmarks/search.md: 1M × 384,
recall@10 0.97–0.98, IVF-Flat 45× exact-search batch throughput against HNSW32's 7×); HNSW is next when IVF cannot
reach the target with a quarter of its lists probed. Each candidate that fits is built, tuned (nprobe /
efSearch doubled until the recall target is met) and kept when it meets the target (and the latency limit, when
given). OPQ is not tried automatically: on clustered 64-d data it trained 10–100× longer for +0.01 recall (measured
while writing this; pass `--index OPQ16,IVF1024,PQ16` explicitly to use it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from embedsearch.core.errors import QueryError
from embedsearch.core.vectors import drop_self, l2_normalize
from embedsearch.store import faiss_index as vindex

log = logging.getLogger(__name__)

EXACT_UP_TO = 50_000  # below this many vectors exact search takes well under a millisecond per query batch row
RECALL_R = (10, 20)
TUNE_QUERIES = 1000
LATENCY_QUERIES = 200
NPROBE_MAX_FRACTION = 0.25  # beyond a quarter of the lists an IVF index is slower than exact search
EF_VALUES = (16, 32, 64, 128, 256, 512, 1024, 2048)

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # a fresh iterator of raw (ids, vectors) per call


@dataclass
class Candidate:
    factory: str
    param: str | None  # the search-time knob tuned to the target: "nprobe", "efSearch" or None (exact)
    bytes_estimate: int
    values: tuple[int, ...] = ()
    on_disk: bool = False  # lists in a file beside index.faiss (store/ondisk.py); bytes_estimate is then RAM only

    @property
    def kind(self) -> str:
        f = self.factory
        return "exact" if f == "Flat" else "HNSW" if f.startswith("HNSW") else "IVF-PQ" if "PQ" in f else \
            "IVF-SQ8" if "SQ8" in f else "IVF-Flat"


@dataclass
class Tuned:
    factory: str
    params: dict
    recall: dict  # {"1-recall@10": .., "10-recall@10": .., ...}
    latency_ms: dict  # {"mean": .., "p99": .., "batch_qps": ..}
    bytes: int
    n: int
    build_s: float
    sweep: list[dict] = field(default_factory=list)
    met: bool = True
    why: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_per_vector"] = round(self.bytes / max(self.n, 1), 2)
        return d


def nlist_for(n: int) -> int:
    """K ≈ 4·√n lists, a power of two, with at least 39 training points per list (FAISS's k-means minimum)."""
    k = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    return int(max(1, min(k, n // 39, 65536)))


def pq_m(d: int, budget_bytes: float) -> int:
    """Sub-quantizers of a 4-bit PQ code (m/2 bytes): the largest even divisor of d up to d/2 within the budget."""
    best = 2
    for m in range(2, d // 2 + 1, 2):
        if d % m == 0 and m / 2 <= budget_bytes:
            best = m
    return best


def candidates(n: int, d: int, max_memory: int | None = None, exact_up_to: int = EXACT_UP_TO,
               allow_on_disk: bool = False) -> list[Candidate]:
    """Index types worth trying for n vectors of dim d, fastest-at-equal-recall first, within `max_memory` bytes.
    `allow_on_disk`: when no in-memory type fits, IVF-Flat with its lists on disk (what stays in memory is the
    quantizer; the build holds one shard of a quarter of the budget)."""
    budget = max_memory if max_memory is not None else float("inf")
    flat = n * (4 * d + 48)  # IDMap2 keeps an id and a hash entry per vector
    if n <= exact_up_to and flat <= budget:
        return [Candidate("Flat", None, flat)]
    k = nlist_for(n)
    centroids = k * 4 * d
    probes = tuple(p for p in (2 ** i for i in range(17)) if p <= max(1, int(k * NPROBE_MAX_FRACTION)))
    out = [
        Candidate(f"IVF{k},Flat", "nprobe", n * (4 * d + 8) + centroids, probes),
        Candidate("HNSW32", "efSearch", n * (4 * d + 32 * 2 * 4 + 64), EF_VALUES),
        Candidate(f"IVF{k},SQ8", "nprobe", n * (d + 8) + centroids, probes),
    ]
    m = pq_m(d, (budget - centroids) / max(n, 1) - 8 if budget != float("inf") else d)
    out.append(Candidate(f"IVF{k},PQ{m}x4fs", "nprobe", n * (m // 2 + 8) + centroids, probes))
    fits = [c for c in out if c.bytes_estimate <= budget]
    if not fits and allow_on_disk and centroids <= budget / 2:
        return [Candidate(f"IVF{k},Flat", "nprobe", centroids, probes, on_disk=True)]
    if not fits:
        need = min(c.bytes_estimate for c in out)
        raise QueryError(f"no index type fits --max-memory {budget / 2**20:.0f} MiB for {n} × {d}-d vectors "
                         f"(the smallest, {out[-1].factory}, needs about {need / 2**20:.0f} MiB)")
    if flat <= budget:
        fits.append(Candidate("Flat", None, flat))  # always reaches the target: the last resort
    return fits


# --------------------------------------------------------------------------------------------- measuring


def sample_rows(chunks: Iterable[tuple[np.ndarray, np.ndarray]], n: int, size: int, seed: int):
    """A seeded sample of `size` rows in one streaming pass: (ids, raw float32 vectors), in storage order."""
    keep = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    ids_out, vec_out, offset = [], [], 0
    for ids, v in chunks:
        sel = keep[(keep >= offset) & (keep < offset + len(ids))] - offset
        ids_out.append(np.asarray(ids)[sel])
        vec_out.append(np.asarray(v, np.float32)[sel])
        offset += len(ids)
    if not ids_out:
        return np.zeros(0, np.int64), None
    return np.concatenate(ids_out), np.concatenate(vec_out)


def build_trained(chunks: Chunks, n: int, d: int, factory: str, seed: int):
    """Build `factory` from a fresh pass over the chunks, trained first (IVF/PQ) on a seeded sample drawn in another
    pass: (index, training rows or None)."""
    sample = None
    if not vindex.make_index(d, factory).is_trained:
        _, sample = sample_rows(chunks(), n, vindex.train_sample_size(factory, n), seed)
    return vindex.build_index(chunks(), d, factory, train_sample=sample), None if sample is None else len(sample)


def trained_empty(chunks: Chunks, n: int, d: int, factory: str, seed: int):
    """The same training as `build_trained` (the same seeded sample), without adding: (empty index, sample rows)."""
    _, sample = sample_rows(chunks(), n, vindex.train_sample_size(factory, n), seed)
    return vindex.build_index((), d, factory, train_sample=sample), len(sample)


def recalls(approx: np.ndarray, exact: np.ndarray, rs=RECALL_R) -> dict:
    """1-recall@R: the true nearest is in the approximate top R; R-recall@R: share of the true top R found."""
    out = {}
    for r in rs:
        a, e = approx[:, :r], exact[:, :r]
        out[f"1-recall@{r}"] = round(float(np.mean([e[i, 0] in a[i] for i in range(len(a)) if e[i, 0] >= 0])), 4)
        hits = [len(np.intersect1d(a[i][a[i] >= 0], e[i][e[i] >= 0])) / max((e[i] >= 0).sum(), 1)
                for i in range(len(a))]
        out[f"{r}-recall@{r}"] = round(float(np.mean(hits)), 4)
    return out


def latency(index, queries: np.ndarray, k: int, n: int = LATENCY_QUERIES) -> dict:
    """Mean and p99 of one-query-at-a-time search, and the throughput of one batch of all `queries`."""
    q = l2_normalize(queries)
    times = []
    for row in q[:n]:
        t0 = time.perf_counter()
        index.search(row[None], k)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    index.search(q, k)
    batch = time.perf_counter() - t0
    t = np.asarray(times) * 1e3
    return {"mean": round(float(t.mean()), 4), "p99": round(float(np.percentile(t, 99)), 4),
            "batch_qps": round(len(q) / batch, 1), "single_queries": len(t), "batch_queries": len(q)}


def tune(index, cand: Candidate, queries: np.ndarray, gt_ids: np.ndarray, target: float,
         r: int = 10) -> tuple[dict, dict, list[dict]]:
    """Smallest nprobe / efSearch whose R-recall@R on the queries (not in the index) reaches `target`:
    (params, recalls, sweep)."""
    q = l2_normalize(queries)
    rmax = max(RECALL_R)
    sweep = []
    values = cand.values if cand.param else (None,)
    for v in values:
        params = {cand.param: max(v, rmax) if cand.param == "efSearch" else v} if cand.param else {}
        vindex.set_params(index, params)
        _, got = index.search(q, rmax)
        rec = recalls(got, gt_ids)
        sweep.append({**params, **rec})
        if rec[f"{r}-recall@{r}"] >= target:
            return params, rec, sweep
    return params, rec, sweep


def auto_index(chunks: Chunks, n: int, d: int, *, max_memory: int | None = None, target_recall: float = 0.95,
               max_latency_ms: float | None = None, seed: int = 0, n_queries: int = TUNE_QUERIES,
               exact_up_to: int = EXACT_UP_TO, progress: Callable[[str], None] | None = None):
    """Build the first candidate that fits `max_memory` and reaches `target_recall` (10-recall@10) on held-out
    queries (and `max_latency_ms` mean single-query latency, when given). Returns (index, record)."""
    say = progress or log.info
    cands = candidates(n, d, max_memory, exact_up_to)
    record = {"mode": "auto", "target": {"10-recall@10": target_recall, "max_latency_ms": max_latency_ms},
              "max_memory": max_memory, "n": n, "dim": d, "seed": seed, "tried": []}
    if cands[0].factory == "Flat" and len(cands) == 1:
        index = vindex.build_index(chunks(), d, "Flat")
        record.update(chosen="Flat", why=f"{n} vectors ≤ {exact_up_to}: exact search is cheap and has recall 1",
                      params={})
        return index, record

    q_ids, q = sample_rows(chunks(), n, min(n_queries, max(n // 10, 1)), seed + 1)

    def rest() -> Iterator:  # everything but the tuning queries
        for ids, v in chunks():
            keep = ~np.isin(ids, q_ids)
            yield np.asarray(ids)[keep], np.asarray(v)[keep]

    n_rest = n - len(q_ids)
    _, gt = vindex.exact_topk(rest(), q, max(RECALL_R))
    record["tuning_queries"] = {"n": len(q_ids), "sampled_from": f"the vectors, seed {seed + 1}; held out of the "
                                "index while tuning, added afterwards"}
    best = None
    for cand in cands:  # all within the budget already
        say(f"auto index: building {cand.factory} (≈ {cand.bytes_estimate / 2**20:.0f} MiB)")
        t0 = time.perf_counter()
        index, _ = build_trained(rest, n_rest, d, cand.factory, seed)
        build_s = time.perf_counter() - t0
        params, rec, sweep = tune(index, cand, q, gt, target_recall)
        lat = latency(index, q, 10)
        size = vindex.index_bytes(index)
        met = rec["10-recall@10"] >= target_recall and (max_latency_ms is None or lat["mean"] <= max_latency_ms)
        why = "" if met else (f"10-recall@10 {rec['10-recall@10']} < {target_recall} at the largest {cand.param}"
                              if rec["10-recall@10"] < target_recall else
                              f"mean latency {lat['mean']} ms > {max_latency_ms} ms")
        t = Tuned(cand.factory, params, rec, lat, size, n, round(build_s, 2), sweep, met, why)
        record["tried"].append(t.to_dict())
        say(f"auto index: {cand.factory} {params} → 10-recall@10 {rec['10-recall@10']}, "
            f"{lat['mean']:.3f} ms/query{'' if met else ' — ' + why}")
        if met:
            best = (index, t)
            break
        if best is None or rec["10-recall@10"] > best[1].recall["10-recall@10"]:
            best = (index, t)
    index, t = best
    index.add_with_ids(l2_normalize(q), np.ascontiguousarray(q_ids, dtype=np.int64))
    vindex.set_params(index, t.params)
    record.update(chosen=t.factory, params=t.params, recall=t.recall, latency_ms=t.latency_ms,
                  bytes=t.bytes, bytes_per_vector=round(t.bytes / n, 2), met=t.met,
                  why=("first candidate (by FAISS's guidelines) that fits the budget and meets the target"
                       if t.met else "no candidate met the target; kept the one with the best recall: " + t.why))
    if not t.met:
        log.warning("auto index: no candidate met the target; using %s (%s)", t.factory, t.why)
    return index, record


def leave_one_out(chunks: Chunks, n: int, q_ids: np.ndarray | None = None, n_queries: int = TUNE_QUERIES,
                  seed: int = 0):
    """Indexed items as queries, each one's own id left out of the exact and the approximate results (for IVF the
    lists a query scans do not depend on whether it is indexed, so this equals held-out recall): (query ids,
    queries, exact top ids). `q_ids` repeats a recorded set of queries (the ones still indexed)."""
    rmax = max(RECALL_R)
    if q_ids is None:
        q_ids, q = sample_rows(chunks(), n, min(n_queries, n), seed)
    else:
        got_ids, got = [], []
        want = np.asarray(q_ids, np.int64)
        for ids, v in chunks():
            m = np.isin(ids, want)
            got_ids.append(np.asarray(ids)[m])
            got.append(np.asarray(v, np.float32)[m])
        q_ids, q = np.concatenate(got_ids), np.concatenate(got)
    gt_s, gt_i = vindex.exact_topk(chunks(), q, rmax + 1)
    gt, _ = drop_self(gt_i, gt_s, q_ids, rmax)
    return q_ids, q, gt


def loo_recalls(index, q_ids: np.ndarray, q: np.ndarray, gt: np.ndarray) -> dict:
    rmax = max(RECALL_R)
    s, ids = index.search(l2_normalize(q), rmax + 1)
    got, _ = drop_self(ids, s, q_ids, rmax)
    return recalls(got, gt)


def tune_on_disk(index_file, chunks: Chunks, n: int, d: int, factory: str, *, target_recall: float, seed: int,
                 max_memory: int | None, n_queries: int = TUNE_QUERIES) -> tuple[dict, dict]:
    """`--index auto` chose IVF-Flat on disk (nothing fits `max_memory` in memory): the smallest nprobe whose
    leave-one-out 10-recall@10 reaches the target. Returns (params, the auto record)."""
    index = vindex.load_index(index_file, on_disk=True)
    cand = next(c for c in candidates(n, d, max_memory, allow_on_disk=True) if c.on_disk)
    q_ids, q, gt = leave_one_out(chunks, n, n_queries=min(n_queries, max(n // 10, 1)), seed=seed + 1)
    sweep, params, rec = [], {}, {}
    for v in cand.values:
        params = {"nprobe": v}
        vindex.set_params(index, params)
        rec = loo_recalls(index, q_ids, q, gt)
        sweep.append({**params, **rec})
        if rec["10-recall@10"] >= target_recall:
            break
    met = rec["10-recall@10"] >= target_recall
    lat = latency(index, q, 10)
    record = {"mode": "auto", "target": {"10-recall@10": target_recall, "max_latency_ms": None},
              "max_memory": max_memory, "n": n, "dim": d, "seed": seed, "chosen": factory, "params": params,
              "on_disk": True, "recall": rec, "latency_ms": lat, "sweep": sweep, "met": met,
              "tuning_queries": {"n": len(q_ids), "sampled_from": f"the indexed vectors, seed {seed + 1}, each "
                                 "query's own id left out (for IVF the same as held out)"},
              "why": f"no in-memory index fits --max-memory {max_memory}: IVF-Flat with its lists on disk"
                     + ("" if met else f"; 10-recall@10 {rec['10-recall@10']} < {target_recall} at the largest "
                        "nprobe")}
    if not met:
        log.warning("auto index: on-disk %s reached 10-recall@10 %s < %s", factory, rec["10-recall@10"],
                    target_recall)
    return params, record


# --------------------------------------------------------------------------------------------- neighbour graphs

PAIRS_EXACT_UP_TO = 200_000  # banks up to this size get their neighbours by exact search (duplicates, leaks)
GRAPH_RECALL = 0.99  # the share of the exact K nearest each approximate search must find, measured on a sample


@dataclass
class Neighbours:
    """A bank's approximate K-nearest-neighbour search for the pair finders: IVF-Flat over the normalized bank
    (inner products are exact for what it finds), nprobe raised until a seeded sample of queries finds
    `GRAPH_RECALL` of its exact K nearest — measured, and recorded with every result that uses it."""

    index: object
    nprobe: int
    recall: float
    sample: int
    factory: str

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.index.nprobe = self.nprobe
        return self.index.search(np.ascontiguousarray(q, np.float32), k)

    def to_dict(self) -> dict:
        return {"kind": "approximate", "factory": self.factory, "nprobe": self.nprobe,
                "recall_at_k": round(self.recall, 4), "measured_on": self.sample}


def neighbour_index(xn: np.ndarray, k: int, seed: int = 0, target: float = GRAPH_RECALL,
                    sample: int = 1000) -> Neighbours | None:
    """An approximate K-NN search over normalized rows `xn` that finds `target` of each query's exact k nearest
    (other rows of the bank, measured on `sample` seeded rows left out of their own results), or None when even a
    quarter of the lists probed does not reach it (exact search is then as fast)."""
    import faiss

    from embedsearch.query.exact import Bank, topk

    n, d = xn.shape
    nlist = nlist_for(n)
    rng = np.random.default_rng(seed)
    train = xn[np.sort(rng.choice(n, min(n, max(39 * nlist, 10_000)), replace=False))]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(train, np.float32))
    for a in range(0, n, 65536):
        index.add(np.ascontiguousarray(xn[a:a + 65536], np.float32))
    q_rows = np.sort(rng.choice(n, min(n, sample), replace=False))
    es, ei = topk(Bank(xn), xn[q_rows], k + 1, desc="neighbours: exact sample")
    exact, _ = drop_self(ei, es, q_rows, k)
    cap = max(1, int(nlist * NPROBE_MAX_FRACTION))
    tries = sorted({*(2 ** e for e in range(int(math.log2(cap)) + 1)), cap})  # 1, 2, 4, …, the cap itself
    found = 0.0
    for nprobe in tries:
        index.nprobe = nprobe
        gs, gi = index.search(np.ascontiguousarray(xn[q_rows], np.float32), k + 1)
        got, _ = drop_self(gi, gs, q_rows, k)
        found = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, exact, strict=True)]))
        if found >= target:
            return Neighbours(index, nprobe, found, len(q_rows), f"IVF{nlist},Flat")
    log.info("approximate neighbours: %.3f of the exact %d nearest at nprobe %d < %.2f; searching exactly", found,
             k, cap, target)
    return None
