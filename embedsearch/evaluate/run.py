"""The record of an evaluation run: `EvalRun` and its `EvalResult`s, and the result schema.

`EvalResult` is one (index, method) result, the versioned JSON (RESULT_SCHEMA) stored in reports/ and the
catalog; `EvalRun` holds a run's results, skipped variants and time table."""

from __future__ import annotations

from dataclasses import dataclass, field

from embedsearch.evaluate.methods import Fitted

RESULT_SCHEMA = "embedsearch.eval/1"


@dataclass
class EvalResult:
    """One (index, method) result; `to_dict()` is the JSON stored in reports/ and the catalog."""

    data: dict
    model: Fitted | None = None  # the fitted variant (not serialized into the JSON; its tensors become a probe)

    def to_dict(self) -> dict:
        return self.data

    @property
    def method(self) -> str:
        return self.data["method"]

    def headline(self) -> dict:
        m = self.data.get("metrics", {})
        return {"index": self.data["index"], "method": self.data["method"], "variant": self.data.get("variant"),
                "top1": m.get("top1"), "top5": m.get("top5"), "balanced_accuracy": m.get("balanced_accuracy"),
                "ci95_top1": m.get("ci95", {}).get("top1"), "n_train": self.data["train"]["n"],
                "n_test": self.data["test"]["n"], "params": _short_params(self.data.get("params", {}))}


@dataclass
class EvalRun:
    run_id: str
    index: str
    results: list[EvalResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {method, variant, reason}: could not run on these selections
    # one row per method run or reused: {method, seconds, estimate_s, variants, reused_from (a run id or None)}
    timings: list[dict] = field(default_factory=list)
    machine: dict = field(default_factory=dict)  # the rates the plan's estimates were divided by
    # the steps before the methods, same row shape: reading the selections, the train/test leak search
    preamble: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "index": self.index, "results": [r.to_dict() for r in self.results],
                "skipped": self.skipped, "timings": self.timings, "preamble": self.preamble, "machine": self.machine}

    def summary(self) -> dict:
        """The run without its results' bodies: which result files it holds, what was skipped, the time table."""
        return {"schema": RESULT_SCHEMA, "run_id": self.run_id, "index": self.index,
                "results": [{"method": r.method, "variant": r.data.get("variant"), "run_id": r.data["run_id"]}
                            for r in self.results],
                "skipped": self.skipped, "timings": self.timings, "preamble": self.preamble,
                "machine": self.machine}

    def timing_table(self) -> str:
        """The steps before the methods, then method, estimated and measured seconds, and where a reused result
        came from: one line each."""
        lines = [f"{'method':<11} {'estimate':>9} {'took':>9}  note"]
        for t in self.preamble + self.timings:
            est = "" if t.get("estimate_s") is None else format_duration(t["estimate_s"])
            note = (t["note"] if "note" in t else f"reused from run {t['reused_from']}" if t.get("reused_from")
                    else f"{t['variants']} variant(s)")
            lines.append(f"{t['method']:<11} {est:>9} {format_duration(t['seconds']):>9}  {note}")
        total = sum(t["seconds"] for t in self.preamble + self.timings)
        lines.append(f"{'total':<11} {'':>9} {format_duration(total):>9}")
        return "\n".join(lines)

    def table(self):
        """Headline rows (a list of dicts with `to_arrow()` / `to_pandas()`)."""
        from embedsearch.core.results import Rows

        return Rows(r.headline() for r in self.results)


def format_duration(s: float) -> str:
    """Seconds as `12.3 s`, or minutes from 120 s on (`4.5 min`)."""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _short_params(p: dict) -> str:
    keep = {k: v for k, v in p.items() if k in ("k", "T", "C", "kernel", "epochs", "hidden", "templates", "vote")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())
