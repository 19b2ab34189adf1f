"""How fast can exact kNN at the eval benchmark's size be on this machine? The matrix product, in every precision.

kNN over 50,000 × 384 train / 10,000 test vectors needs the 10,000 × 50,000 similarity matrix: 3.84e11 FLOP. This
script times, in one run on the same vectors, that product alone in float32, bfloat16 and int8 (torch; 2,048
queries per block, the rest of the work of a search left out), FAISS's exact search (product + top-k) and
scikit-learn's KNeighborsClassifier, and prints the speed-up over scikit-learn that each product would allow if the
search cost nothing else. The issue's target was 5×.

    python -m benchmarks knn_bound   # reading: docs/benchmarks/knn_bound.md
"""

from __future__ import annotations

import platform
import time

import numpy as np

from benchmarks._harness import best_of, make_data, sklearn_knn
from embedsearch.core.vectors import l2_normalize


def fastest(fn, reps=2):
    """The fastest of `reps` calls after a warm-up, in seconds."""
    return best_of(fn, reps, warmup=True)[1]


def blocked(a, b, mm, block=2048):
    def run():
        for s in range(0, len(a), block):
            mm(a[s:s + block], b)
    return run


def measure():
    import faiss
    import torch

    from embedsearch.store.faiss_index import use_blas_from

    (xtr, ytr), (xte, _) = make_data(50_000, 10_000, 384, 10)
    b, q = l2_normalize(xtr), l2_normalize(xte)
    flop = 2.0 * len(q) * len(b) * b.shape[1]
    tb, tq = torch.from_numpy(b), torch.from_numpy(q)
    bt32 = tb.t().contiguous()
    bt16 = bt32.bfloat16()
    q16 = tq.bfloat16()
    scale = 127.0 / float(np.abs(b).max())
    b8 = torch.round(tb * scale).to(torch.int8).t().contiguous()
    q8 = torch.round(tq * scale).to(torch.int8)

    rows = {}
    rows["sklearn KNeighborsClassifier(20), fit + predict"] = fastest(lambda: sklearn_knn(xtr, ytr, xte, 20, 0.07), 1)
    use_blas_from(384)
    rows["FAISS exact k=20 (product + top-k heap, float32)"] = fastest(
        lambda: faiss.knn(q, b, 20, metric=faiss.METRIC_INNER_PRODUCT))
    rows["product only, float32 (torch sgemm)"] = fastest(blocked(tq, bt32, torch.mm))
    rows["product only, bfloat16 (torch)"] = fastest(blocked(q16, bt16, torch.mm))
    rows["product only, int8 → int32 (torch._int_mm)"] = fastest(blocked(q8, b8, torch._int_mm))
    scores = torch.from_numpy(q[:2048]) @ bt32
    rows["top-k only, k=20 of 50,000 per query (torch.topk on float32)"] = fastest(
        lambda: [torch.topk(scores, 20, dim=1) for _ in range(5)])

    # the machine's peak rate per precision, from a compute-bound square product (no output traffic to speak of)
    n = 3072
    sq = torch.randn(n, n)
    peaks, info = {}, {}
    for name, x, mm in (("float32", sq, torch.mm), ("float32", sq.numpy(), np.matmul),
                        ("bfloat16", sq.bfloat16(), torch.mm),
                        ("int8", sq.clamp(-1, 1).mul(127).to(torch.int8), torch._int_mm)):
        peaks[name] = max(peaks.get(name, 0.0), 2.0 * n ** 3 / fastest(lambda: mm(x, x)))  # noqa: B023
    for name, peak in peaks.items():
        rows[f"product at this machine's peak {name} rate ({n}² square product"
             f"{', best of torch and numpy' if name == 'float32' else ''})"] = flop / peak
        info[f"peak {name} G(FL)OP/s"] = round(peak / 1e9)
    # what FAISS spends beyond a float32 product at peak is its top-k selection (and blocking): an int8 search
    # would pay at least that on top of its own product
    select = rows["FAISS exact k=20 (product + top-k heap, float32)"] - flop / peaks["float32"]
    rows["int8 product at peak + FAISS's selection overhead (estimate, no re-rank)"] = flop / peaks["int8"] + \
        max(select, 0.0)

    # int8 rounding: with per-vector scales the dot product of the dequantized vectors is off by at most
    # ‖q̂‖·‖x − x̂‖ + ‖q − q̂‖·‖x‖; every item whose int8 score is within twice that of the 20th is uncertain and needs
    # an exact re-rank. Count them for 500 queries and time that re-rank (float64, as knn_neighbours does).
    def quant(v):
        sc = np.abs(v).max(axis=1, keepdims=True) / 127.0
        vq = np.round(v / sc).astype(np.int8)
        return vq, sc, np.linalg.norm(v - vq * sc, axis=1)
    bq, bs, be = quant(b)
    qq, qs, qe = quant(q[:500])
    approx = (qq.astype(np.float32) * qs) @ (bq.astype(np.float32) * bs).T
    err = np.linalg.norm(qq * qs, axis=1)[:, None] * be[None, :] + qe[:, None]
    kth = -np.partition(-approx, 19, axis=1)[:, [19]]
    cand = approx >= kth - 2 * err.max(axis=1, keepdims=True)
    n_cand = cand.sum(axis=1)
    r, c = np.nonzero(cand)
    t0 = time.perf_counter()
    for s0 in range(0, len(r), 16384):
        np.einsum("pd,pd->p", q[r[s0:s0 + 16384]], b[c[s0:s0 + 16384]], dtype=np.float64)
    rows["exact re-rank of the int8-uncertain candidates, scaled from 500 queries"] = \
        (time.perf_counter() - t0) * len(q) / 500
    info["int8-uncertain candidates per query (mean)"] = round(float(n_cand.mean()))
    info["int8 error bound, twice (mean)"] = round(float(2 * err.mean()), 4)

    return rows, info


def render(out: dict) -> str:
    runs, infos, flop = out["runs"], out["info"], out["flop"]
    ref = [r["sklearn KNeighborsClassifier(20), fit + predict"] for r in runs]
    lines = ["# bench_knn_bound: the floor under exact kNN at 50,000 × 384 / 10,000 queries", "",
             f"- machine: {out['machine']}", f"- command: `python -m benchmarks knn_bound --runs {len(runs)}`",
             f"- work: 10,000 × 50,000 × 384 similarities = {flop:.3g} FLOP; each row best of 2 after a warm-up,",
             f"  the whole measurement repeated {len(runs)} times: min–max over the repeats (this machine's speed",
             "  varies between minutes; the ratio column pairs each repeat's row with that repeat's scikit-learn)", "",
             "| what | s | sklearn s / this s |", "|---|---|---|"]
    for what in runs[0]:
        t = [r[what] for r in runs]
        ratio = [a / b for a, b in zip(ref, t)]
        lines.append(f"| {what} | {min(t):.3f}–{max(t):.3f} | {min(ratio):.2f}–{max(ratio):.2f}× |")
    lines += [""] + [f"- {k}: {min(i[k] for i in infos)}–{max(i[k] for i in infos)}" for k in infos[0]]
    lines += ["", "Reading: the last column is the speed-up over scikit-learn a search would have if it cost nothing but",
              "that row; the issue's target was 5× with identical predictions.",
              "- float32: the product alone at this CPU's square-matrix peak leaves at most the 'peak float32' ratio,",
              "  well under 5×; FAISS's exact search (what `eval`'s kNN runs) gets most of it.",
              "- bfloat16: the product at the real shape (2,048 × 384 × 50,000, a short inner dimension) stays under",
              "  5× on its own, before any top-k selection (the top-k row; FAISS's fused heap costs what the",
              "  estimate row adds) and before re-ranking the candidates its 8-bit mantissa makes uncertain.",
              "- int8: the product at the real shape reaches 5× at best in the fastest repeat, again before selection,",
              "  and with per-vector scales its rounding leaves about 1,200 candidates per query whose order is",
              "  uncertain; re-ranking them in float64 as knn_neighbours does (last row) alone costs 2–3× scikit-learn's run.",
              "- So 5× with identical predictions is not reachable on this CPU by a faster product; the square-matrix",
              "  peaks show what a custom fused int8 kernel could approach, without exactness."]
    return "\n".join(lines) + "\n"


def add_arguments(ap) -> None:
    ap.add_argument("--runs", type=int, default=3, help="repeat everything; the table shows min and max")


def run(args) -> dict:
    import faiss
    import torch

    runs, infos = zip(*[measure() for _ in range(args.runs)])
    return {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                       f"faiss {faiss.__version__}", "flop": 2.0 * 10_000 * 50_000 * 384, "runs": runs, "info": infos}
