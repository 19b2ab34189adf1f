"""What the insight commands share: a selection read with its vectors, and computed values stored as catalog
columns under the prefix no source column may take (`insight_…`), each run recorded. Its own module so that the
finders (insight.py, label_issues.py) and the map depend on it, not on one another."""

from __future__ import annotations

import numpy as np

from embedsearch.core.schema import COMPUTED_PREFIX


def load(ix, where: str | None, what: str, labelled: bool = False) -> tuple[dict, np.ndarray]:
    """The selection (labelled items only, with `labelled`) and its vectors; at least 2 items, else one line."""
    from embedsearch.core.errors import EvalError

    sel = ix.select(where)
    if labelled:
        keep = sel["class_index"] >= 0
        sel = {k: v[keep] for k, v in sel.items()}
    if len(sel["id"]) < 2:
        raise EvalError(f"{what}: `{where or 'all items'}` selects {len(sel['id'])} "
                        f"{'labelled ' if labelled else ''}items; it needs at least 2")
    return sel, ix.vectors(sel["id"])


def column(name: str) -> str:
    """The catalog column a computed value `name` is stored in (`dup_rank` → `insight_dup_rank`): the prefix no
    source column can take, so it never replaces a source's own column of that name."""
    return name if name.startswith(COMPUTED_PREFIX) else COMPUTED_PREFIX + name


def stored_columns(ix) -> set[str]:
    """The computed columns an opened index's catalog holds (those `store_columns` created)."""
    import json

    row = ix.con.execute("SELECT value FROM meta WHERE key = 'computed_columns'").fetchone()
    return set(json.loads(row[0])) if row else set()


def store_columns(ix, kind: str, ids: np.ndarray, columns: dict, config: dict) -> str:
    """Store the columns in the catalog, each under `column(name)`, and record the run (kind `insight:KIND`, its
    parameters). The finders (insight.py, label_issues.py) and the map's projection (report/map.py) store their
    values through it."""
    import time
    import uuid

    from embedsearch.store.catalog import Catalog

    columns = {column(c): v for c, v in columns.items()}
    run_id = uuid.uuid4().hex[:12]
    t = time.time()
    cat = Catalog(ix.layout.catalog)
    cat.set_columns(ids, columns)
    cat.add_run(run_id, f"insight:{kind}", t, t, "complete", config, {"columns": list(columns)})
    return run_id
