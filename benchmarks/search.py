"""Search at scale: exact search against this machine's own limits, approximate indexes at recall@10 ≥ 0.95, and
numpy / scikit-learn brute force, all in one run on the same vectors.

    python -m benchmarks search                   # 1,000,000 × 384 (about 25 min on the 2-core CI machine)
    python -m benchmarks search --n 100000 --out /tmp/b   # a quick look (results under /tmp/b/search/)

Data: clustered synthetic vectors (1,000 random centres, a 16-dim low-rank spread per point plus isotropic noise),
L2-normalized, and 1,000 fresh queries from the same distribution (not in the database). Ground truth: exact float32
search. Limits, measured here in the same run:
- bandwidth: the best of a 1 GiB array copy on one thread and split over all threads, (bytes read + written) / s;
  one query against n·d·bytes must take at least (bytes scanned) / bandwidth.
- arithmetic: a 4096³ float32 matrix product's FLOP/s; a batch of nq queries must take at least 2·nq·n·d / FLOP/s.
Approximate indexes are built by `embedsearch.ann` (the code behind `--index auto`). auto tunes on vectors it holds
out of the index; the other candidates are tuned on the first 500 fresh queries. Recall and speed are then measured
on all fresh queries against the exact float32 results. The reading: docs/benchmarks/search.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedsearch.core.vectors import l2_normalize
from embedsearch.query import ann
from embedsearch.store import faiss_index as vindex

K = 10
QUICK = {"n": 20_000, "queries": 200, "single": 5}


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def clustered(n, d, seed, centres=1000, rank=16):
    """This benchmark's own data (not `_harness.clustered`): a rank-16 spread around each centre, L2-normalized."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    basis = rng.standard_normal((rank, d), dtype=np.float32) / np.sqrt(rank)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # in blocks: bounded temporary memory
        m = min(100_000, n - s)
        lab = rng.integers(0, centres, m)
        out[s:s + m] = (c[lab] + 0.6 * rng.standard_normal((m, rank), dtype=np.float32) @ basis
                        + 0.25 * rng.standard_normal((m, d), dtype=np.float32))
    return l2_normalize(out)


def best(f, repeat=3):
    return min(f() for _ in range(repeat))


def limits(threads):
    src = np.ones(2**28, np.float32)  # 1 GiB
    dst = np.empty_like(src)

    def copy1():
        t = time.perf_counter()
        np.copyto(dst, src)
        return time.perf_counter() - t

    def copyn():
        parts = np.array_split(np.arange(len(src)), threads)
        sl = [slice(p[0], p[-1] + 1) for p in parts]
        with ThreadPoolExecutor(threads) as ex:
            t = time.perf_counter()
            list(ex.map(lambda s: np.copyto(dst[s], src[s]), sl))
            return time.perf_counter() - t

    bw1, bwn = 2 * src.nbytes / best(copy1), 2 * src.nbytes / best(copyn)
    a = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    a @ a
    flops = 2 * 4096**3 / best(lambda: _t(lambda: a @ a))
    return {"copy_GBps_1thread": bw1 / 1e9, f"copy_GBps_{threads}threads": bwn / 1e9, "bandwidth_GBps": max(bw1, bwn) / 1e9,
            "sgemm_GFLOPs": flops / 1e9}


def _t(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def recall(got, truth):
    return float(np.mean([len(np.intersect1d(got[i][got[i] >= 0], truth[i])) / K for i in range(len(truth))]))


def time_single(search_one, q, n):
    for i in range(3):  # warm-up: page faults, thread pools
        search_one(q[i:i + 1])
    times = [_t(lambda i=i: search_one(q[i:i + 1])) for i in range(n)]
    return float(np.mean(times)), float(np.percentile(times, 99))


def numpy_topk(x, q, k, block=65536):
    """numpy brute force: blocked matrix product + argpartition, merged across blocks."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for b0 in range(0, len(x), block):
        s = q @ x[b0:b0 + block].T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        cs = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        ci = np.concatenate([best_i, part + b0], 1)
        o = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return best_s, best_i


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=30, help="queries timed one at a time")


def run(args) -> dict:
    import faiss
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    threads = faiss.omp_get_max_threads()
    n, d, nq = args.n, args.d, args.queries
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "faiss_threads": threads, "python": platform.python_version(), "faiss": faiss.__version__,
                       "numpy": np.__version__, "sklearn": sklearn.__version__},
           "data": {"n": n, "d": d, "queries": nq, "k": K, "kind": "clustered synthetic (1000 centres, rank-16 "
                    "spread + isotropic noise), L2-normalized; queries fresh from the same distribution"},
           "command": "python -m benchmarks search " + " ".join(f"--{k} {v}" for k, v in vars(args).items())}
    say("limits …")
    res["limits"] = lim = limits(threads)
    say(json.dumps(lim))
    x = clustered(n + nq, d, seed=0)
    x, q = x[:n], x[n:].copy()  # queries: the same clusters, not in the database
    rows = []

    def exact_row(method, search, bytes_scanned, n_single, bytes_per_vector):
        """One query at a time against the bandwidth limit, one batch of all queries against the FLOP/s limit."""
        mean, p99 = time_single(search, q, n_single)
        t_batch = best(lambda: _t(lambda: search(q)), 2)
        got = search(q[:200])
        return {"method": method, "recall@10": recall(got, truth[:200]) if truth is not None else 1.0,
                "single_ms": mean * 1e3, "single_p99_ms": p99 * 1e3, "batch_qps": nq / t_batch,
                "single_vs_bandwidth": (bytes_scanned / mean) / (lim["bandwidth_GBps"] * 1e9),
                "batch_vs_flops": (2 * nq * n * d / t_batch) / (lim["sgemm_GFLOPs"] * 1e9),
                "bytes_per_vector": bytes_per_vector}

    # ---- exact search (embedsearch's `Flat` and `SQfp16` through index.search), against the limits
    truth = None
    for factory, bytes_per in (("Flat", 4), ("SQfp16", 2)):
        say(f"exact {factory} …")
        ix = vindex.build_index([(np.arange(n), x)], d, factory)
        if truth is None:
            truth = vindex.search(ix, q, K)[1]
        rows.append(exact_row(f"embedsearch exact ({factory}, {'float32' if bytes_per == 4 else 'float16'})",
                              lambda qq, ix=ix: vindex.search(ix, qq, K)[1], n * d * bytes_per, args.single,
                              vindex.index_bytes(ix) / n))
        say(rows[-1])
        del ix

    # ---- numpy and scikit-learn brute force on the same float32 vectors
    say("numpy …")
    rows.append(exact_row("numpy brute force (float32, blocked matmul + argpartition)",
                          lambda qq: numpy_topk(x, qq, K)[1], n * d * 4, min(args.single, 10), 4 * d))
    say(rows[-1])
    say("scikit-learn …")
    nn = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine").fit(x)
    rows.append(exact_row("scikit-learn NearestNeighbors(brute, cosine)", lambda qq: nn.kneighbors(qq)[1],
                          n * d * 4, min(args.single, 10), 4 * d))
    say(rows[-1])

    # ---- approximate: what --index auto picks, then every other candidate tuned the same way
    ids = np.arange(n, dtype=np.int64)

    def chunks():
        return ((ids[s:s + 100_000], x[s:s + 100_000]) for s in range(0, n, 100_000))

    say("auto …")
    t0 = time.perf_counter()
    auto_ix, rec = ann.auto_index(chunks, n, d, target_recall=0.95, seed=0, progress=say)
    res["auto"] = {**rec, "total_s": time.perf_counter() - t0}
    built = {rec["chosen"]: (auto_ix, rec["params"], rec["tried"][-1]["build_s"])}
    # other candidates are tuned on the fresh queries' own halves: the first 500 tune, recall is then measured on all
    _, gt = vindex.exact_topk(chunks(), q[:500], 20)
    for cand in ann.candidates(n, d):
        if cand.factory in built or cand.factory == "Flat":
            continue
        say(f"{cand.factory} …")
        t0 = time.perf_counter()
        ix, _ = ann.build_trained(chunks, n, d, cand.factory, 0)
        params, _, _ = ann.tune(ix, cand, q[:500], gt, 0.95)
        built[cand.factory] = (ix, params, time.perf_counter() - t0)
    exact_batch = rows[0]["batch_qps"]
    exact_single = rows[0]["single_ms"]
    for factory, (ix, params, build_s) in built.items():
        vindex.set_params(ix, params)
        mean, p99 = time_single(lambda qq, ix=ix: vindex.search(ix, qq, K), q, 200)
        t_batch = best(lambda ix=ix: _t(lambda: vindex.search(ix, q, K)), 2)
        _, got = vindex.search(ix, q, K)
        rows.append({"method": f"{'auto → ' if factory == rec['chosen'] else ''}{factory} {params}",
                     "recall@10": recall(got, truth), "single_ms": mean * 1e3, "single_p99_ms": p99 * 1e3,
                     "batch_qps": nq / t_batch, "batch_vs_exact": (nq / t_batch) / exact_batch,
                     "single_vs_exact": exact_single / (mean * 1e3), "bytes_per_vector": vindex.index_bytes(ix) / n,
                     "build_s": build_s})
        say(rows[-1])
    res["rows"] = rows
    return res
