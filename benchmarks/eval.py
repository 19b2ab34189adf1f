"""Benchmark the evaluation methods against scikit-learn on clustered synthetic vectors, side by side in one run.

50,000 × 384 train / 10,000 test, 10 and 100 classes (Gaussian clusters, anisotropic feature scales, a common offset
— raw features as a backbone gives them). For each: time and top-1 of embedsearch's method and of the scikit-learn
estimator doing the same work. The reading: docs/benchmarks/eval.md.

    python -m benchmarks eval [--classes 10 100] [--n-train 50000]
"""

from __future__ import annotations

import os
import platform
import time
from types import SimpleNamespace

import numpy as np

from benchmarks._harness import latest, load, make_data, sklearn_knn, timed

QUICK = {"classes": [10], "n_train": 2000, "n_test": 500, "dim": 64, "svc_n": 500, "selection_classes": []}


class Unfinished(Exception):
    """scikit-learn's selection passed --selection-cap-s: its time so far is a lower bound."""


def sklearn_linear_selection(xtr, ytr, seed, grid, cap_s=None):
    """The same selection procedure as embedsearch's probe (coarse grid, early stop, refine, refit), with sklearn.
    With `cap_s`, raises Unfinished(seconds, fits done) once a fit ends past the cap."""
    from sklearn.linear_model import LogisticRegression

    from embedsearch.evaluate.methods.base import holdout_split

    fit, held = holdout_split(ytr, seed=seed)
    tried = {}
    t0 = time.perf_counter()

    def score(i):
        m = LogisticRegression(C=float(grid[i]), max_iter=1000).fit(xtr[fit], ytr[fit])
        tried[i] = float((m.predict(xtr[held]) == ytr[held]).mean())
        print(f"  sklearn C={grid[i]:.3g}: held-out {tried[i]:.4f}, {time.perf_counter() - t0:.0f} s so far", flush=True)
        if cap_s is not None and time.perf_counter() - t0 > cap_s:
            raise Unfinished(time.perf_counter() - t0, len(tried))

    coarse = list(range(0, len(grid), 4)) + [len(grid) - 1]
    worse = 0
    for i in coarse:
        score(i)
        worse = worse + 1 if tried[i] < max(tried.values()) else 0
        if worse == 3:
            break
    best = max(tried, key=lambda i: (tried[i], -i))
    for i in range(max(0, best - 2), min(len(grid), best + 3)):
        if i not in tried:
            score(i)
    best = max(tried, key=lambda i: (tried[i], -i))
    return LogisticRegression(C=float(grid[best]), max_iter=1000).fit(xtr, ytr), float(grid[best])


def add_arguments(ap) -> None:
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--svc-n", type=int, default=5_000, help="RBF SVC training items (O(n²): subsampled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spectrum", choices=["flat", "power"], default="flat",
                    help="synthetic features: independent (flat) or correlated with a 1/i eigenvalue decay (power)")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the rows of the measured class counts in the newest saved result, keep the "
                         "others")
    ap.add_argument("--only", choices=["all", "knn", "linear"], default="all",
                    help="knn / linear: measure only those rows (with --merge, replace only those rows)")
    ap.add_argument("--selection-cap-s", type=float, default=None,
                    help="stop scikit-learn's C selection once it has run this long (its time is then a lower bound)")
    ap.add_argument("--selection-classes", type=int, nargs="*", default=[10],
                    help="class counts for which scikit-learn also runs the whole C selection (slow on raw features)")


def run(args) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from embedsearch.evaluate.methods import knn as M_knn
    from embedsearch.evaluate.methods import linear as M_linear
    from embedsearch.evaluate.methods import mlp as M_mlp
    from embedsearch.evaluate.methods import prototypes as M_proto
    from embedsearch.evaluate.methods import svc as M_svc

    rows = []
    from embedsearch.evaluate.methods.base import measure_rates

    rates = measure_rates()  # this machine's float32 GEMM rate and streaming bandwidth, in the same run
    flop_share = lambda t: f"{2 * args.n_test * args.n_train * args.dim / t / rates.flops:.0%} of the float32 " \
        f"FLOP limit ({rates.flops / 1e9:.0f} GFLOP/s)"  # noqa: E731

    def add(C, method, ours_s, ours_acc, ref, ref_s, ref_acc, note=""):
        rows.append({"dim": args.dim, "spectrum": args.spectrum, "classes": C, "method": method, "embedsearch_s": round(ours_s, 3), "embedsearch_top1": ours_acc,
                     "sklearn": ref, "sklearn_s": None if ref_s is None else round(ref_s, 3), "sklearn_top1": ref_acc,
                     "speedup": None if ref_s is None else round(ref_s / ours_s, 2), "note": note})
        print(rows[-1], flush=True)

    for C in args.classes:
        (xtr, ytr), (xte, yte) = make_data(args.n_train, args.n_test, args.dim, C, args.seed, args.spectrum)
        acc = lambda pred: float((np.asarray(pred) == yte).mean())  # noqa: E731

        if args.only == "linear":
            linear_rows(args, C, xtr, ytr, xte, acc, add)
            continue
        (protos, has), t = timed(lambda: M_proto.prototypes(xtr, ytr, C))
        s, t2 = timed(lambda: M_proto.prototype_scores(protos, has, xte))
        add(C, "prototypes", t + t2, acc(s.argmax(1)), "(none)", None, None,
            f"{xtr.nbytes / t / rates.bandwidth:.0%} of the streaming bandwidth ({rates.bandwidth / 1e9:.0f} GB/s, "
            "float32 in memory)")

        def knn_one(k):  # search + vote, as `eval` runs them
            sims, idx = M_knn.knn_neighbours(xtr, xte, k)
            return M_knn.knn_scores(sims, ytr[idx], k, C, M_knn.KNN_T, M_knn.ExactSims(xtr, xte, idx), (1,)).argmax(1)

        ours20, t_ours20 = timed(lambda: knn_one(20))
        ref20, t_ref = timed(lambda: sklearn_knn(xtr, ytr, xte, 20, M_knn.KNN_T))
        add(C, "kNN weighted k=20, T=0.07 (one k)", t_ours20, acc(ours20), "KNeighborsClassifier(20, exp(cos/T))",
            t_ref, acc(ref20), f"identical predictions: {np.mean(ours20 == ref20):.4%}; {flop_share(t_ours20)}")
        # the protocol's sweep: k ∈ {10, 20, 100, 200} × {weighted, majority} from one exact search
        (sims, idx), t_sweep_ours = timed(lambda: M_knn.knn_neighbours(xtr, xte, 200, ks=M_knn.KNN_KS))
        exact, t_ex = timed(lambda: M_knn.ExactSims(xtr, xte, idx))
        t_sweep_ours += t_ex
        t_sweep_ref = 0.0
        same = []
        for k in M_knn.KNN_KS:
            for T in (M_knn.KNN_T, None):
                ours, tv = timed(lambda: M_knn.knn_scores(sims, ytr[idx], k, C, T, exact, (1,)).argmax(1))  # noqa: B023
                t_sweep_ours += tv
                ref, tr = timed(lambda: sklearn_knn(xtr, ytr, xte, k, T))  # noqa: B023
                t_sweep_ref += tr
                same.append(np.mean(ours == ref))
        add(C, "kNN protocol sweep (k ∈ {10,20,100,200} × weighted/majority)", t_sweep_ours, None,
            "8 × KNeighborsClassifier", t_sweep_ref, None, f"identical predictions: min {min(same):.4%} over the 8; "
            f"{flop_share(t_sweep_ours)}")
        if args.only == "knn":
            continue

        (predict, params, _), t_ours = timed(lambda: M_linear.linear_probe(xtr, ytr, C, seed=args.seed))
        ours_acc = acc(predict(xte).argmax(1))
        if C in args.selection_classes:
            (ref_m, ref_C), t_ref = timed(lambda: sklearn_linear_selection(xtr, ytr, args.seed, M_linear.LINEAR_C_GRID))
            add(C, "linear probe, C selection + refit", t_ours, ours_acc, "LogisticRegression(lbfgs), same procedure",
                t_ref, acc(ref_m.predict(xte)), f"C: embedsearch {params['C']:.3g}, sklearn {ref_C:.3g}")
        else:
            add(C, "linear probe, C selection + refit", t_ours, ours_acc, "(not run: see one-fit row)", None, None,
                f"C: embedsearch {params['C']:.3g}; {len(params['C_tried'])} C values tried")
        best_C = params["C"]
        Y = torch.from_numpy(ytr)
        one, t_ref1 = timed(lambda: LogisticRegression(C=best_C, max_iter=1000).fit(xtr, ytr))
        dtypes = [torch.float64] if params["dtype"] == "float64" else [torch.float32, torch.float64]
        for dt in dtypes:  # the dtype the probe chose, and float64 for reference where it chose float32
            pre = M_linear.Preconditioned(xtr, "cpu", dt)
            (W, b0, _), t_one = timed(lambda: M_linear.fit_logreg(pre, Y, C, best_C))
            W, b0 = W.double().numpy(), b0.double().numpy()
            tag = str(dt).removeprefix("torch.") + (" (the probe's choice)" if str(dt).endswith(params["dtype"]) else "")
            add(C, f"linear, one fit at C={best_C:.3g}, {tag}", t_one, acc((xte @ W + b0).argmax(1)),
                "LogisticRegression(lbfgs)", t_ref1, acc(one.predict(xte)), f"sklearn iterations {int(one.n_iter_[0])}")

        sub = np.random.default_rng(args.seed).permutation(len(ytr))[: args.svc_n]
        (svc_pred, svc_params), t_svc = timed(lambda: M_svc.exact_rbf_svc(xtr[sub], ytr[sub]))
        ours_svc = acc(svc_pred(xte, C).argmax(1))

        def ref_svc():
            sc = StandardScaler().fit(xtr[sub])
            return SVC(kernel="rbf", gamma="scale").fit(sc.transform(xtr[sub]), ytr[sub]).predict(sc.transform(xte))

        ref_p, t_rs = timed(ref_svc)
        add(C, f"SVC rbf ({args.svc_n} train items)", t_svc, ours_svc, "SVC(rbf, gamma=scale)", t_rs, acc(ref_p),
            f"backend {svc_params['backend']}: the same estimator")
        (mlp_pred, mlp_params, _), t_mlp = timed(lambda: M_mlp.mlp_probe(xtr, ytr, C, seed=args.seed))
        add(C, "MLP 256 ReLU (early stopping on held-out)", t_mlp, acc(mlp_pred(xte).argmax(1)), "(none)", None, None,
            f"epochs {mlp_params['epochs']}")

    previous = latest("eval", suffixes=(".json", ".csv")) if args.merge else None
    if previous is not None:
        old = load(previous)["rows"]
        for r in old:
            r["dim"] = r.get("dim") or 384  # rows written before the columns existed
            r["spectrum"] = r.get("spectrum") or "flat"
        family = {"all": "", "knn": ("kNN", "prototypes"), "linear": "linear"}[args.only]
        replaced = lambda r: (r["dim"] == args.dim and r["spectrum"] == args.spectrum  # noqa: E731
                              and r["classes"] in args.classes
                              and r["method"].startswith(family))
        order = {r["method"]: i for i, r in enumerate(old)}
        rows = [r for r in old if not replaced(r)] + [r for r in rows if replaced(r)]
        rows.sort(key=lambda r: (r["spectrum"] != "flat", r["dim"], r["classes"], order.get(r["method"], len(order))))
    return {"config": vars(args), "machine": machine_line(), "rows": rows}


def linear_rows(args, C, xtr, ytr, xte, acc, add) -> None:
    """The linear probe's whole selection against scikit-learn's same procedure (capped), then one fit of each at
    the probe's C (top-1 at equal C: the 'equal accuracy' check when the capped selection did not finish)."""
    from sklearn.linear_model import LogisticRegression

    from embedsearch.evaluate.methods import linear as M_linear

    (predict, params, _), t_ours = timed(lambda: M_linear.linear_probe(xtr, ytr, C, seed=args.seed))
    ours_acc = acc(predict(xte).argmax(1))
    try:
        (ref_m, ref_C), t_ref = timed(lambda: sklearn_linear_selection(xtr, ytr, args.seed, M_linear.LINEAR_C_GRID,
                                                                       args.selection_cap_s))
        add(C, "linear probe, C selection + refit", t_ours, ours_acc, "LogisticRegression(lbfgs), same procedure",
            t_ref, acc(ref_m.predict(xte)), f"C: embedsearch {params['C']:.3g}, sklearn {ref_C:.3g}")
    except Unfinished as e:
        t_ref, fits = e.args
        add(C, "linear probe, C selection + refit", t_ours, ours_acc,
            f"LogisticRegression(lbfgs), same procedure: stopped after {fits} of its fits", t_ref, None,
            f"C: embedsearch {params['C']:.3g} ({len(params['C_tried'])} C tried); sklearn unfinished at the cap, "
            f"so the speed-up is a lower bound")
    import torch

    dtype = getattr(torch, params["dtype"])
    (W, b0, it), t_one = timed(lambda: M_linear.fit_logreg(M_linear.Preconditioned(xtr, "cpu", dtype),
                                                            torch.from_numpy(ytr), C, params["C"]))
    one, t_ref1 = timed(lambda: LogisticRegression(C=params["C"], max_iter=1000).fit(xtr, ytr))
    add(C, f"linear, one fit at C={params['C']:.3g} ({params['dtype']}, the probe's refit)", t_one,
        acc((xte @ W.double().numpy() + b0.double().numpy()).argmax(1)), "LogisticRegression(lbfgs)", t_ref1,
        acc(one.predict(xte)), f"iterations: embedsearch {it}, sklearn {int(one.n_iter_[0])}")


def bound(r) -> str:
    return "≥ " if "lower bound" in str(r["note"]) else ""


def machine_line() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def render(result: dict) -> str:
    """The reading from a result (results saved before the harness, as CSV, have no config: the defaults then)."""
    rows, args = result["rows"], SimpleNamespace(**{"n_train": 50_000, "n_test": 10_000, "seed": 0, **result.get("config", {})})
    machine = result.get("machine") or machine_line()
    fmt = lambda v: "" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) and v <= 1 else str(v))  # noqa: E731
    families = ("prototypes", "kNN weighted", "kNN protocol", "linear probe", "linear, one fit", "SVC", "MLP")
    rows = sorted(rows, key=lambda r: ((r.get("spectrum") or "flat") != "flat", r.get("dim") or 384, r["classes"],
                                       next((i for i, f in enumerate(families) if r["method"].startswith(f)), 9)))
    lines = ["# bench_eval: evaluation methods vs scikit-learn", "",
             f"- machine: {machine}",
             "- commands: `python -m benchmarks eval --classes 10 100 --selection-classes 10` (the 10-class rows), "
             "then `python -m benchmarks eval --classes 100 --selection-classes --merge` (the 100-class rows, "
             "re-measured after the float32 change to the probe), then `python -m benchmarks eval --only knn --merge` "
             "(the kNN rows, re-measured after the float64 certification of neighbour sets and votes; one-k rows "
             "time search + vote); the 2,048- and 3,072-d rows: `python -m benchmarks eval --dim D --classes C "
             "--only linear|knn --merge [--spectrum power] --selection-cap-s S` (each row names its data)",
             f"- data: {args.n_train} train / {args.n_test} test clustered synthetic vectors (seed {args.seed}); "
             "`flat`: independent features with scales in [0.2, 3]; `power`: correlated features, covariance "
             "eigenvalues ∝ 1/i, class separation held at the 384-d rows' (see `make_data`)",
             "- seconds are wall time of fit + predict; top-1 in %", "",
             "| data | classes | method | embedsearch s | top-1 | scikit-learn | sklearn s | top-1 | speed-up | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.get('dim') or 384}-d {r.get('spectrum') or 'flat'} | {r['classes']} | {r['method']} | {r['embedsearch_s']} | {fmt(r['embedsearch_top1'])} | "
                     f"{r['sklearn']} | {'' if r['sklearn_s'] is None else r['sklearn_s']} | {fmt(r['sklearn_top1'])} | "
                     f"{'' if r['speedup'] is None else bound(r) + str(r['speedup']) + '×'} | {r['note']} |")
    lines += ["", "Reading:",
              "- kNN at one k is bound by the same matrix product in both (10,000 × 50,000 × 384 similarities =",
              "  3.84e11 FLOP, about 2 s at this machine's float32 peak; docs/benchmarks/knn_bound.md). embedsearch",
              "  (FAISS's blocked BLAS with a fused top-k heap, then the float64 certification) is 1.8–2.0× faster than",
              "  KNeighborsClassifier; the 5× the issue asked for is out of reach: a float32 search at 100 % of the",
              "  peak would be about 2.6×, and knn_bound.md shows why bfloat16 / int8 products do not get there",
              "  with exact predictions either. The DINOv2 protocol needs every k ∈ {10, 20, 100, 200} with weighted",
              "  and majority votes: embedsearch gets all 8 from one exact search (11.9–12.9× faster than 8",
              "  classifiers). Predictions are identical (10,000 of 10,000 in every row): neighbour sets at each k are",
              "  certified against the float32 error bound and near-ties re-ranked in float64, and near-tied votes",
              "  recounted with float64 similarities (before that: 1 or 2 of 10,000 differed).",
              "- The linear probe solves scikit-learn's objective with a diagonally preconditioned L-BFGS (same optimum);",
              "  'same procedure' runs the identical C grid, early stop and refit with LogisticRegression.",
              "- SVC rows: both columns are scikit-learn's SVC on the same standardized data (embedsearch calls",
              "  decision_function, the reference predict); the time difference is not an embedsearch speed-up.",
              "- The 100-class synthetic task is hard by construction (low top-1 for every method); it measures time.",
              "- At 100 classes the probe solves in float32 (n·d·classes above 2.5e8). The float64 row shows why: there",
              "  the preconditioned solver is slower than scikit-learn (it runs into the iteration cap); the whole",
              "  float64 selection had not finished after 13 minutes in an earlier run.",
              "- MLP: early stopping on the held-out 10 % chose the epoch count shown.",
              "- At 2,048-d and beyond, what decides the linear probe's lead is the features' conditioning, not their",
              "  size. On `flat` features scikit-learn's L-BFGS needs 95 iterations for the refit and the lead is",
              "  2.3×. On `power` features (correlated, like a backbone's) it needs 629 and its whole selection had not",
              "  finished at the cap (the 'same procedure' row: its time so far, so the speed-up is a lower bound); the",
              "  probe solves in the covariance's eigenbasis, where the iteration count stays at 14–20 for every C.",
              "  Equal accuracy is checked by the one-fit rows at the probe's C (both solve the same objective).",
              "- kNN rows state their share of the float32 FLOP limit measured in the same run (a 1024³ product; the",
              "  FAISS search beats that small square product at one k, hence 101 %). The sweep's 99.99 % at 2,048-d is",
              "  one query of 10,000 (majority vote, k = 20) where scikit-learn's float32 distances put the wrong item",
              "  at rank 20: the similarities at ranks 20 and 21 differ by 4.3e-8, and a float64 brute-force search",
              "  gives embedsearch's neighbour set and vote (checked by hand after the run). At 100 classes the sweep's",
              "  99.98 % is 2 of 10,000 in one of its 8 variants; embedsearch's predictions equal a float64 brute-force",
              "  search's in all 8 × 10,000 (checked after the run), so the 2 are scikit-learn's float32 error.",
              "- The 3,072-d selection row: scikit-learn stopped at the 1,500 s cap after 10 of its fits, so ≥ 11× is a",
              "  lower bound; an earlier run with an 800 s cap could only show ≥ 5.9×."]
    return "\n".join(lines) + "\n"

