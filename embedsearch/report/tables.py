"""Reports: the Markdown summary of an eval run, the aggregate table over runs, and model-vs-model comparison."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from embedsearch.core.errors import EvalError
from embedsearch.evaluate.metrics import TOPK_RULE
from embedsearch.evaluate.results import ResultStore


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def markdown_run(run, ix) -> str:
    """The summary printed after `embedsearch eval`: every number with its method, selection and parameters."""
    r0 = run.results[0].data
    lines = [f"## {ix.name}: evaluation run {run.run_id}", "",
             f"- backbone: `{r0['backbone']}` (d = {r0['space']['dim']}, stored {r0['space']['dtype']})",
             f"- train: `{r0['train']['where']}` → {r0['train']['n']} items, {r0['train']['n_classes']} classes; "
             f"test: `{r0['test']['where']}` → {r0['test']['n']} items, {r0['test']['n_classes']} classes",
             f"- seed {r0['seed']}; hyper-parameters are chosen on a held-out part of train (each method's "
             "selection is listed below), then refit on all of train; test is used once."
             + (f" CI: {ci_how}." if (ci_how := _ci_method(run)) else "")]
    unseen = r0["test"].get("classes_without_train") or {}
    if unseen:
        names = ", ".join(f"{c} ({n})" for c, n in list(unseen.items())[:5]) + (", …" if len(unseen) > 5 else "")
        lines.append(f"- {sum(unseen.values())} test items belong to {len(unseen)} classes with no train item "
                     f"({names}): every method but CLIP zero-shot counts them as errors.")
    for sk in getattr(run, "skipped", []):
        lines.append(f"- {sk['variant'] or sk['method']}: not run — {sk['reason']}")
    for t in getattr(run, "timings", []):
        if t.get("reused_from"):
            lines.append(f"- {t['method']}: reused from run {t['reused_from']}, committed for the same index "
                         "snapshot, selections, seed and parameters (`eval --fresh` recomputes)")
    lk = r0["test"].get("leaks")
    if lk is not None and lk.get("reported", True):
        decided = lk.get("decided_by") or f"cosine ≥ {lk['threshold']:g}, exact search"
        lines.append(f"- leaks: {lk['n']} of {r0['test']['n']} test items ({100 * lk['fraction']:.2f} %) have a "
                     f"near-duplicate in train ({decided}); \"w/o leaks\" is top-1 "
                     "on the other test items" + (" — over 1 %: check them with `embedsearch leaks`"
                                                   if lk["fraction"] > 0.01 else "")
                     + ("; at this share, unrelated items are likely this similar in this embedding space (raw "
                        "pixels are): `embedsearch leaks --calibrate` says whether it separates copies at all"
                        if lk["fraction"] > 0.1 else "") + ".")
    elif lk is not None:
        lines.append(f"- leak-free accuracy: not reported — {lk['why']}.")
    # the "w/o leaks" column only where a trustworthy leak detection decided it (evaluate/runner._stored_leaks)
    wl_col = any((r.data.get("metrics") or {}).get("without_leaks") for r in run.results)
    lines += [f"- top-k: {TOPK_RULE}.", "",
              "| method | variant | top-1 % [95 % CI] |" + (" top-1 % w/o leaks |" if wl_col else "")
              + " top-5 % | balanced acc. % | macro F1 % | parameters |",
              "|---|---|---|" + ("---|" if wl_col else "") + "---|---|---|---|"]
    for r in run.results:
        d = r.data
        m = d.get("metrics") or {}
        if d["method"] == "fewshot":
            continue
        ci = m.get("ci95", {}).get("top1")
        wl = m.get("without_leaks") or {}
        lines.append(f"| {d['method']} | {d['variant']} | {_pct(m.get('top1'))} [{_pct(ci[0])}, {_pct(ci[1])}] | "
                     + (f"{_pct(wl.get('top1'))} | " if wl_col else "")
                     + f"{_pct(m.get('top5'))} | {_pct(m.get('balanced_accuracy'))} | {_pct(m.get('macro_f1'))} | "
                     f"{_params_md(d)} |")
    chosen = [(r.data["variant"], r.data["params"]["selection"]) for r in run.results
              if "selection" in r.data.get("params", {})]
    if chosen:
        lines += ["", "Hyper-parameters chosen on train only:"]
        lines += [f"- {v}: {sel}" for v, sel in chosen]
    for r in run.results:
        if r.method == "knn" and r.data["params"].get("vote") != "majority":
            sweep = r.data["params"]["k_sweep_top1"]
            lines += ["", "kNN k-sweep (weighted, T = {}), top-1 %: ".format(r.data["params"]["k_sweep_T"])
                      + ", ".join(f"k={k}: {_pct(v)}" for k, v in sweep.items())]
        if r.method == "fewshot":
            fp = r.data["params"]
            lines += ["", f"Few-shot top-1 % (mean ± std over {fp['seeds']} seeds; kNN k = {fp['knn_k']}, "
                      f"T = {fp['knn_T']}):", "",
                      "| shots / class | prototypes | kNN |", "|---|---|---|"]
            for c in r.data["curve"]:
                lines.append(f"| {c['shots']} | {_pct(c['prototypes_mean'])} ± {_pct(c['prototypes_std'])} | "
                             f"{_pct(c['knn_mean'])} ± {_pct(c['knn_std'])} |")
    if getattr(run, "timings", None):
        mach = run.machine
        lines += ["", f"Time per method (fit, selection of hyper-parameters and scoring test; estimates from this "
                  f"machine's measured {mach.get('float32_gemm_gflops')} GFLOP/s and "
                  f"{mach.get('memory_gbytes_per_s')} GB/s):", "", "```", run.timing_table(), "```"]
    return "\n".join(lines) + "\n"


def _ci_method(run) -> str | None:
    """How the confidence intervals were computed, as the results record it (one method for the whole run)."""
    hows = {(r.data.get("metrics") or {}).get("ci95", {}).get("method") for r in run.results} - {None}
    return "95 % " + "; ".join(sorted(hows)) if hows else None


def write_eval_report(ix, run, html_path=None) -> tuple[str, Path]:
    """Render a committed run (`evaluate.runner.run_and_commit`): its Markdown summary, and its HTML report written
    to `html_path` (default reports/eval-RUN.html in the index). Returns (markdown summary, path of the HTML
    report): the report half of `embedsearch eval` and `quickstart`."""
    from embedsearch.report.html import eval_report

    md = markdown_run(run, ix)
    page = eval_report(ix, run, md)
    path = Path(html_path) if html_path else ix.layout.reports / f"eval-{run.run_id}.html"
    path.write_text(page)
    return md, path


def _params_md(d: dict) -> str:
    p = d.get("params", {})
    keys = {"prototypes": ["metric"], "knn": ["k", "T", "vote"], "linear": ["C"], "svc": ["kernel", "gamma", "C"],
            "mlp": ["hidden", "epochs"], "zeroshot": ["templates", "template_set"]}.get(d["method"], [])
    out = []
    for k in keys:
        if k in p:
            v = p[k]
            out.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(out)


def aggregate(indexes) -> list[dict]:
    """One row per (index, method variant): the table `embedsearch report` prints."""
    from embedsearch.core.results import Rows

    rows = Rows()
    for ix in indexes:
        for d in ResultStore(ix).latest():
            m = d.get("metrics") or {}
            if not m:
                continue
            ci = m.get("ci95", {}).get("top1", [None, None])
            rows.append({"index": ix.name, "backbone": d["backbone"], "method": d["method"], "variant": d["variant"],
                         "top1": m.get("top1"), "top1_ci_low": ci[0], "top1_ci_high": ci[1], "top5": m.get("top5"),
                         "balanced_accuracy": m.get("balanced_accuracy"), "macro_f1": m.get("macro_f1"),
                         "params": _params_md(d), "train": f"{d['train']['where']} (n={d['train']['n']})",
                         "test": f"{d['test']['where']} (n={d['test']['n']})", "seed": d["seed"],
                         "run_id": d["run_id"]})
    return rows


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial test, p = 0.5)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def compare(indexes) -> dict:
    """Pairwise comparison on the items both evaluated (joined on id), per shared method variant."""
    if len(indexes) < 2:
        raise EvalError("compare needs at least two indexes")
    res = {ix.name: ResultStore(ix).newest_by_setting() for ix in indexes}
    a, others = indexes[0], indexes[1:]
    out = {"reference": a.name, "pairs": []}
    for b in others:
        shared = sorted(set(res[a.name]) & set(res[b.name]))
        if not shared:
            methods = {k[:2] for k in res[a.name]} & {k[:2] for k in res[b.name]}
            raise EvalError(f"{a.name} and {b.name} have no evaluation method in common" + (
                " with the same --train, --test and seed: run `embedsearch eval` on both with the same selections"
                if methods else ": run `embedsearch eval` on both"))
        for key in shared:
            ra, rb = res[a.name][key], res[b.name][key]
            pa = dict(zip(ra["predictions"]["id"], zip(ra["predictions"]["true"], ra["predictions"]["pred"], strict=False), strict=False))
            pb = dict(zip(rb["predictions"]["id"], zip(rb["predictions"]["true"], rb["predictions"]["pred"], strict=False), strict=False))
            common = sorted(set(pa) & set(pb))
            if not common:
                continue
            if ra["classes"] != rb["classes"]:
                raise EvalError(f"{a.name} and {b.name} have different class tables; they are not the same dataset")
            ya = np.array([pa[i][0] for i in common])
            ca = np.array([pa[i][1] == pa[i][0] for i in common])
            cb = np.array([pb[i][1] == pb[i][0] for i in common])
            b_only, a_only = int((~ca & cb).sum()), int((ca & ~cb).sum())
            classes = ra["classes"]
            per_class = []
            for c in np.unique(ya):
                sel = ya == c
                per_class.append({"class": classes[c], "support": int(sel.sum()), f"recall_{a.name}": float(ca[sel].mean()),
                                  f"recall_{b.name}": float(cb[sel].mean()),
                                  "delta": float(cb[sel].mean() - ca[sel].mean())})
            per_class.sort(key=lambda r: r["delta"])
            out["pairs"].append({
                "a": a.name, "b": b.name, "method": key[0], "variant": key[1], "n_common": len(common),
                "top1_a": float(ca.mean()), "top1_b": float(cb.mean()), "delta": float(cb.mean() - ca.mean()),
                "a_wrong_b_right": b_only, "b_wrong_a_right": a_only, "both_wrong": int((~ca & ~cb).sum()),
                "mcnemar_p": mcnemar_exact(a_only, b_only), "per_class": per_class,
                "train_where": ra["train"]["where"], "test_where": ra["test"]["where"], "seed": ra["seed"],
                "run_ids": (ra["run_id"], rb["run_id"])})
    return out
