"""An index's evaluation results, written and read in one place: `ResultStore(ix)`.

It commits a run's results (probe, reports/ JSON, the catalog's `results` row) and reads them back (for reuse,
the latest per variant, the newest per setting, every row)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from embedsearch.core.errors import IndexStateError
from embedsearch.core.schema import from_record

if TYPE_CHECKING:
    from embedsearch.evaluate.run import EvalRun
    from embedsearch.reader import Index


class _Known:
    """A record of which only some fields are checked: the others stay in the stored result as written."""

    @classmethod
    def prepare_record(cls, d: dict, fail) -> dict:
        return {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}


@dataclass(frozen=True)
class Selection(_Known):
    where: str
    n: int


@dataclass(frozen=True)
class Reuse(_Known):
    key: str
    variants: int
    position: int
    probe: bool = False


@dataclass(frozen=True)
class Predictions(_Known):
    id: list
    true: list
    pred: list


@dataclass(frozen=True)
class StoredResult(_Known):
    """The fields of a stored result (the catalog's `results` rows, reports/eval-*.json) that its readers rely on
    — reuse, the latest table, `compare`, the reports — checked as the row is read back: a catalog may come from
    someone else, and a wrong type is one line naming the field, not a KeyError in a report."""

    run_id: str
    method: str
    train: Selection
    test: Selection
    variant: str | None = None
    seed: int = 0
    backbone: str | None = None
    classes: list | None = None
    metrics: dict | None = None
    params: dict | None = None
    predictions: Predictions | None = None
    reuse: Reuse | None = None


class ResultStore:
    """The evaluation results of one opened index: the result JSONs under reports/, the probes under probes/
    and the rows of the catalog's `results` table (the commit)."""

    def __init__(self, ix: Index):
        self.ix = ix

    # ----------------------------------------------------------------------------------------------- writing

    def commit(self, run: EvalRun, i: int) -> str:
        """Commit result `i` of a run: its fitted classifier as a probe under probes/ (for `embedsearch
        classify`), its JSON under reports/ (both atomic files), then — the commit — its row in the catalog's
        results table (one transaction). `eval` calls it as each method finishes, so a stop or a later method's
        failure loses nothing already computed."""
        from embedsearch.core.files import atomic_write_bytes
        from embedsearch.evaluate.probes import save_probe
        from embedsearch.store.catalog import Catalog

        ix = self.ix
        r = run.results[i]
        t = r.model.tensors() if r.model is not None else None
        if t is not None:
            meta = {k: r.data[k] for k in ("run_id", "variant", "params", "train", "seed")}
            save_probe(ix, r.method, t, meta | {"n_classes": len(r.data["classes"])},
                       key=r.data.get("reuse", {}).get("key"))
        ix.layout.reports.mkdir(exist_ok=True)
        p = ix.layout.reports / f"eval-{run.run_id}-{i:02d}-{r.method}.json"
        atomic_write_bytes(p, json.dumps(r.to_dict(), indent=1, default=_np).encode())
        Catalog(ix.layout.catalog).add_result(run.run_id, r.method, 1,
                                              json.loads(json.dumps(r.to_dict(), default=_np)))
        ix.close()  # the reader's catalog snapshot is taken again on its next query, so it sees this result
        return str(p)

    def commit_all(self, run: EvalRun) -> list[str]:
        """Every result of a run: see `commit`."""
        return [self.commit(run, i) for i in range(len(run.results))]

    def write_summary(self, run: EvalRun) -> str:
        """reports/eval-RUN.json: the run's result files, skipped variants and per-method time table
        (atomic)."""
        from embedsearch.core.files import atomic_write_bytes

        ix = self.ix
        ix.layout.reports.mkdir(exist_ok=True)
        p = ix.layout.reports / f"eval-{run.run_id}.json"
        atomic_write_bytes(p, json.dumps(run.summary(), indent=1, default=_np).encode())
        return str(p)

    # ----------------------------------------------------------------------------------------------- reading

    def reusable(self, keys: dict[str, str]) -> dict[str, list[dict]]:
        """Per method, the newest run's results committed under its setting key, when that run committed every
        variant (a stop between a method's variants leaves it incomplete, and the method runs again)."""
        if not keys:
            return {}
        marks = ", ".join("?" for _ in keys)
        _, rows = self.ix.sql(f"SELECT run_id, result FROM results WHERE "
                              f"json_extract_string(result, '$.reuse.key') IN ({marks}) ORDER BY created DESC",
                              list(keys.values()))
        by_key = {v: k for k, v in keys.items()}
        out: dict[str, list[dict]] = {}
        runs: dict[tuple, list[dict]] = {}
        for run_id, res in rows:
            d = self._read(res)
            runs.setdefault((by_key[d["reuse"]["key"]], run_id), []).append(d)
        for (method, _), ds in runs.items():  # newest run first
            if method not in out and len(ds) == ds[0]["reuse"]["variants"]:
                out[method] = sorted(ds, key=lambda d: d["reuse"]["position"])
        return out

    def latest(self) -> list[dict]:
        """The newest result of each (method, variant) stored in the index's catalog."""
        _, rows = self.ix.sql("SELECT result FROM results ORDER BY created")
        latest: dict[tuple, dict] = {}
        for (res,) in rows:
            d = self._read(res)
            latest[(d["method"], d.get("variant"))] = d
        return list(latest.values())

    def newest_by_setting(self) -> dict[tuple, dict]:
        """The newest result with predictions per (method, variant, train selection, test selection, seed):
        `compare` pairs only results obtained the same way, so a newer run on other selections never stands in
        for a like one."""
        _, rows = self.ix.sql("SELECT result FROM results ORDER BY created")
        out: dict[tuple, dict] = {}
        for (res,) in rows:
            d = self._read(res)
            if d.get("predictions"):
                out[(d["method"], d.get("variant"), d["train"]["where"], d["test"]["where"], d["seed"])] = d
        return out

    def _read(self, res) -> dict:
        """One stored result as its dict, once `StoredResult`'s fields check."""
        try:
            d = json.loads(res) if isinstance(res, str) else res
        except ValueError as e:
            raise IndexStateError(f"a stored result of index {self.ix.name} is not JSON ({e}); re-run `embedsearch "
                                  "eval`") from None
        from_record(StoredResult, d, "", source=f"of index {self.ix.name}", what="stored result")
        return d

    def rows(self, method: str | None = None) -> list[dict]:
        """Every stored result, oldest first (`method`: that method's only): {run_id, method, created,
        result} — what the HTTP API's /results answers. Read on the index's own catalog connection, as one statement (a
        server holding the index's lock around it sees one snapshot)."""
        sql = ("SELECT r.run_id, r.method, r.created, r.result FROM results r "
               + ("WHERE r.method = ? " if method else "") + "ORDER BY r.created, r.run_id")
        got = self.ix.con.execute(sql, [method] if method else []).fetchall()
        return [{"run_id": r, "method": m, "created": c, "result": json.loads(j)} for r, m, c, j in got]


def save_result(ix: Index, run: EvalRun, i: int) -> str:
    """`ResultStore(ix).commit(run, i)`."""
    return ResultStore(ix).commit(run, i)


def save_run(ix: Index, run: EvalRun) -> list[str]:
    """`ResultStore(ix).commit_all(run)`: every result of a run."""
    return ResultStore(ix).commit_all(run)


def save_summary(ix: Index, run: EvalRun) -> str:
    """`ResultStore(ix).write_summary(run)`."""
    return ResultStore(ix).write_summary(run)


def _np(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
