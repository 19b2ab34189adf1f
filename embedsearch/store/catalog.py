"""The DuckDB catalog: items, classes, runs and results; read-only SQL over it and views over the Parquet parts."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from embedsearch.core.errors import IndexStateError, QueryError, SourceError, first_line
from embedsearch.core.files import crash_point
from embedsearch.core.schema import COMPUTED_PREFIX

SCHEMA_VERSION = 1
BASE_COLUMNS = ("id", "path", "label", "class_index", "split", "part", "status", "stage", "error_type", "error",
                "width", "height")
_LOCK_RETRY_S = 10.0

# Scalar functions a --where predicate may call; anything else that looks like a call (read_csv, glob, …) is refused.
WHERE_FUNCTIONS = {
    "lower", "upper", "length", "abs", "round", "coalesce", "substr", "substring", "starts_with", "ends_with",
    "contains", "regexp_matches", "regexp_full_match", "like", "ilike", "cast", "try_cast", "hash", "trim", "in",
    "not", "and", "or", "strlen", "mod", "greatest", "least", "isnan", "is", "between", "floor", "ceil",
}

_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    "CREATE TABLE IF NOT EXISTS classes (class_index INTEGER PRIMARY KEY, name VARCHAR UNIQUE)",
    """CREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY, kind VARCHAR, started TIMESTAMP,
           finished TIMESTAMP, status VARCHAR, config JSON, summary JSON)""",
    """CREATE TABLE IF NOT EXISTS results (run_id VARCHAR, method VARCHAR, schema_version INTEGER,
           created TIMESTAMP, result JSON)""",
]


def _connect(path: Path, read_only: bool):
    import duckdb

    return _retrying(path, lambda: duckdb.connect(str(path), read_only=read_only))


def _retrying(path: Path, open_fn):
    """`open_fn()` (a connect or an ATTACH of the catalog file), retried while a writer holds the lock for a moment;
    any other failure is one line naming the file."""
    import duckdb

    deadline = time.monotonic() + _LOCK_RETRY_S
    while True:
        try:
            return open_fn()
        except duckdb.IOException as e:
            # another process holds the write lock for a moment (the indexer commits a part); wait briefly
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise IndexStateError(f"catalog {path} cannot be opened: {first_line(e)}") from None
            time.sleep(0.05)
        except duckdb.Error as e:
            raise IndexStateError(f"catalog {path} is unreadable ({type(e).__name__}: {first_line(e)}); "
                                  "run `embedsearch verify --repair`") from None


class Catalog:
    """One DuckDB file per index. Writers hold a connection only for one short transaction at a time, so queries
    from other processes keep working while an index is being built."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextmanager
    def write(self) -> Iterator:
        """One transaction; a failed write (disk full, I/O error) rolls back and names the catalog file."""
        import duckdb

        con = _connect(self.path, read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            yield con
            crash_point("before-commit:catalog")
            con.execute("COMMIT")
            crash_point("after-commit:catalog")
        except BaseException as e:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # the transaction is already gone (DuckDB invalidates it after an I/O error)
            io_failure = isinstance(e, (duckdb.IOException, duckdb.FatalException, OSError)) or (
                isinstance(e, duckdb.TransactionException) and "could not write" in str(e).lower())
            if io_failure:
                raise IndexStateError(f"cannot write catalog {self.path}: {first_line(e)}; the "
                                      "transaction was rolled back and data committed before is intact — free "
                                      "space or fix the disk, then re-run the same command") from None
            raise
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator:
        """A short read-only connection (the writer may be another process)."""
        con = _connect(self.path, read_only=True)
        try:
            yield con
        finally:
            con.close()

    # ----------------------------------------------------------------------------------- schema

    def init(self) -> None:
        """Create or migrate the schema. A catalog from a newer embedsearch is refused, never rebuilt."""
        exists = self.path.exists()
        with self.write() as con:
            for stmt in _DDL:
                con.execute(stmt)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                if exists and con.execute("SELECT count(*) FROM classes").fetchone()[0]:
                    raise IndexStateError(f"catalog {self.path} has no schema version; rebuild it with verify --repair")
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0]) > SCHEMA_VERSION:
                raise IndexStateError(f"catalog {self.path} has schema v{row[0]}, newer than this embedsearch "
                                      f"(v{SCHEMA_VERSION}): upgrade embedsearch")
            # migrations from older versions go here, one step per version, each in this transaction

    # ----------------------------------------------------------------------------------- items

    def add_items(self, records, parts: list[int], classes: list[str]) -> None:
        """Insert new items (with their planned part) and any classes not yet in the class table."""
        import pyarrow as pa

        with self.write() as con:
            known = dict(con.execute("SELECT name, class_index FROM classes").fetchall())
            for c in classes:
                if c not in known:
                    known[c] = len(known)
                    con.execute("INSERT INTO classes VALUES (?, ?)", [known[c], c])
            meta_cols = sorted({k for r in records for k in r.meta})
            clash = [c for c in meta_cols if c in BASE_COLUMNS]
            if clash:
                raise QueryError(f"source column {clash[0]!r} collides with a catalog column; rename it")
            reserved = [c for c in meta_cols if c.lower().startswith(COMPUTED_PREFIX)]
            if reserved:
                raise SourceError(f"source column {reserved[0]!r}: names starting with {COMPUTED_PREFIX!r} are "
                                  "reserved for the columns embedsearch computes (duplicates, leaks, label-issues, "
                                  "outliers, map); rename the column")
            cols = {
                "id": pa.array([r.id for r in records], pa.int64()),
                "path": pa.array([r.path for r in records], pa.string()),
                "label": pa.array([r.label for r in records], pa.string()),
                "class_index": pa.array([known.get(r.label) if r.label is not None else None for r in records],
                                        pa.int32()),
                "split": pa.array([r.split for r in records], pa.string()),
                "part": pa.array(parts, pa.int32()),
                "status": pa.array(["pending"] * len(records), pa.string()),
                "stage": pa.nulls(len(records), pa.string()),
                "error_type": pa.nulls(len(records), pa.string()),
                "error": pa.nulls(len(records), pa.string()),
                "width": pa.nulls(len(records), pa.int32()),
                "height": pa.nulls(len(records), pa.int32()),
            }
            for c in meta_cols:
                cols[c] = pa.array([r.meta.get(c) for r in records])
            new = pa.table(cols)  # noqa: F841 — referenced by name in the SQL below
            has_items = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'items'").fetchone()[0]
            if not has_items:
                con.execute("CREATE TABLE items AS SELECT * FROM new")
            else:
                con.execute("INSERT INTO items BY NAME SELECT * FROM new")

    def item_ids(self) -> set[int]:
        if not self.path.exists():
            return set()
        with self.read() as con:
            if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name='items'").fetchone()[0]:
                return set()
            return {r[0] for r in con.execute("SELECT id FROM items").fetchall()}

    def plan(self) -> dict[int, list[int]]:
        """part number → its item ids in order; the plan is fixed when items are added, so resume redoes the same."""
        with self.read() as con:
            out: dict[int, list[int]] = {}
            for part, rid in con.execute("SELECT part, id FROM items ORDER BY part, id").fetchall():
                out.setdefault(part, []).append(rid)
            return out

    def update_items(self, rows: list[dict]) -> None:
        """Set status / stage / error / size for the items of one part, in one transaction."""
        import pyarrow as pa

        if not rows:
            return
        upd = pa.Table.from_pylist(rows, schema=pa.schema([  # noqa: F841 — used in SQL
            ("id", pa.int64()), ("status", pa.string()), ("stage", pa.string()), ("error_type", pa.string()),
            ("error", pa.string()), ("width", pa.int32()), ("height", pa.int32())]))
        with self.write() as con:
            con.execute("""UPDATE items SET status = upd.status, stage = upd.stage, error_type = upd.error_type,
                           error = upd.error, width = upd.width, height = upd.height
                           FROM upd WHERE items.id = upd.id""")

    def add_run(self, run_id: str, kind: str, started: float, finished: float | None, status: str,
                config: dict, summary: dict) -> None:
        with self.write() as con:
            con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            con.execute("INSERT INTO runs VALUES (?, ?, to_timestamp(?), to_timestamp(?), ?, ?, ?)",
                        [run_id, kind, started, finished, status, json.dumps(config, default=str),
                         json.dumps(summary, default=str)])

    def set_columns(self, ids: np.ndarray, columns: dict[str, tuple[str, list]]) -> None:
        """Derived per-item columns (`duplicates`, `leaks`, `label-issues`, `outliers`, `map`) in one transaction:
        each column is added to `items` when missing, and set for `ids` (None → NULL), so `sql` and `--where` see
        it. Names carry COMPUTED_PREFIX, which no source column can have, and are recorded in `meta` as computed:
        a column of that name that embedsearch did not create (an index built before the prefix was reserved) is
        refused, never overwritten. Column names and types come from embedsearch, never from a user."""
        import pyarrow as pa

        for c in columns:
            if not re.fullmatch(COMPUTED_PREFIX + r"[a-z0-9_]+", c):
                raise ValueError(c)
        upd = pa.table({"id": pa.array(np.asarray(ids, np.int64)),  # noqa: F841 — used in SQL
                        **{c: pa.array(v) for c, (_, v) in columns.items()}})
        with self.write() as con:
            have = {r[0].lower(): r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'").fetchall()}
            row = con.execute("SELECT value FROM meta WHERE key = 'computed_columns'").fetchone()
            computed = set(json.loads(row[0])) if row else set()
            for c in columns:
                if c in have and c not in computed:
                    raise IndexStateError(f"catalog {self.path}: column {have[c]!r} of items came from the source, "
                                          "and embedsearch does not overwrite a source's column; rename it in the "
                                          "source and rebuild the index")
            for c, (t, _) in columns.items():
                con.execute(f"ALTER TABLE items ADD COLUMN IF NOT EXISTS {c} {t}")
            sets = ", ".join(f"{c} = CAST(upd.{c} AS {t})" for c, (t, _) in columns.items())
            con.execute(f"UPDATE items SET {sets} FROM upd WHERE items.id = upd.id")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('computed_columns', ?)",
                        [json.dumps(sorted(computed | set(columns)))])

    def add_result(self, run_id: str, method: str, schema_version: int, result: dict) -> None:
        with self.write() as con:
            con.execute("INSERT INTO results VALUES (?, ?, ?, now(), ?)",
                        [run_id, method, schema_version, json.dumps(result, default=str)])


# --------------------------------------------------------------------------------------------- read-only queries


def connect_readonly(catalog_path: Path, parts: list[Path], memory_limit: str | None = None):
    """A connection that can read a snapshot of the catalog and exactly these Parquet parts, nothing else.

    The snapshot is a private copy of the catalog file, made while a read-only attachment holds DuckDB's shared
    lock for that moment (so it is a committed state, never a half-written one; a writer waits at most that long,
    and `Catalog.write` retries), then opened read-only in place and unlinked at once: DuckDB reads its blocks on
    demand, so opening costs a file copy in the kernel (~20 MB for a 1,000,000-item catalog, about 0.1 s) and no
    memory, whatever the catalog's size (a copy into memory took seconds and hundreds of MB at 1M items,
    docs/benchmarks/serve.md). The open handle keeps the file until the connection closes; nothing is left behind,
    even if the process dies. A reader that keeps its connection (a long `sql`, `search ... | less`, a server) never
    holds the catalog's lock, so writers (`index --add`, `eval`, `verify --repair`) are never blocked by it, and a
    writer in the same process is not refused. A reader sees the catalog as it was when it opened, like the manifest
    it opened with. `embeddings` is a temp view over the parts; external access is then switched off and the
    configuration locked, so user SQL cannot read other files, write files, attach databases or undo the settings
    (nor the memory limit). More connections to the same snapshot, one per thread: `cursor_readonly`.
    """
    import duckdb

    config = {}
    if memory_limit:
        from embedsearch.core.units import parse_size

        config["memory_limit"] = f"{parse_size(memory_limit, '--memory-limit')}B"
    snapshot = _snapshot_file(catalog_path)
    try:
        con = duckdb.connect(str(snapshot), read_only=True, config=config)
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.Error as e:
        raise IndexStateError(f"catalog {catalog_path} is unreadable ({type(e).__name__}: "
                              f"{first_line(e)}); run `embedsearch verify --repair`") from None
    finally:
        for f in (snapshot, snapshot.with_name(snapshot.name + ".wal")):
            f.unlink(missing_ok=True)
    if row is None or not str(row[0]).isdigit() or int(row[0]) > SCHEMA_VERSION:
        con.close()
        raise IndexStateError(f"catalog {catalog_path} has schema version {row and row[0]!r}; this embedsearch "
                              f"reads up to v{SCHEMA_VERSION}: upgrade embedsearch")
    files = [str(p.resolve()) for p in parts]
    if files:
        con.execute(f"SET allowed_paths = {_sql_list(files)}")
    _embeddings_view(con, files)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def cursor_readonly(con, parts: list[Path]):
    """Another connection to the snapshot `con` (from `connect_readonly`) reads, for another thread: a DuckDB
    connection runs one query at a time, its cursors run in parallel. Same settings, its own `embeddings` view."""
    cur = con.cursor()
    _embeddings_view(cur, [str(p.resolve()) for p in parts])
    return cur


def _embeddings_view(con, files: list[str]) -> None:
    if files:  # allowed_paths (set before external access was switched off) lets exactly these files be read
        con.execute(f"CREATE TEMP VIEW embeddings AS SELECT * FROM read_parquet({_sql_list(files)})")
    else:
        con.execute("CREATE TEMP VIEW embeddings AS SELECT NULL::BIGINT AS id, NULL::FLOAT[] AS embedding WHERE false")


def _snapshot_file(catalog_path: Path) -> Path:
    """A private copy of the catalog (and of its write-ahead log, which only a writer that died leaves behind) in
    the temp folder, copied under a read-only attachment so that no writer commits while it is made."""
    import shutil
    import tempfile

    import duckdb

    if not catalog_path.is_file():
        raise IndexStateError(f"catalog {catalog_path} is missing; run `embedsearch verify --repair`")
    fd, name = tempfile.mkstemp(prefix="embedsearch-catalog-", suffix=".duckdb")
    os.close(fd)
    snapshot = Path(name)
    lock = duckdb.connect(":memory:")
    quoted = str(catalog_path).replace("'", "''")
    try:
        _retrying(catalog_path, lambda: lock.execute(f"ATTACH '{quoted}' AS catalog_file (READ_ONLY)"))
        try:
            shutil.copyfile(catalog_path, snapshot)
            wal = catalog_path.with_name(catalog_path.name + ".wal")
            if wal.exists():
                shutil.copyfile(wal, snapshot.with_name(snapshot.name + ".wal"))
        except OSError as e:
            raise IndexStateError(f"cannot copy catalog {catalog_path} to {snapshot.parent} for reading: "
                                  f"{e.strerror}; free space there, or point TMPDIR at another folder") from None
    except BaseException:
        snapshot.unlink(missing_ok=True)
        raise
    finally:
        lock.close()
    return snapshot


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def check_select(sql: str) -> None:
    """Only one SELECT statement may run through `embedsearch sql`."""
    import duckdb

    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {first_line(e)}") from None
    if len(stmts) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(stmts)}")
    if stmts[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT statements are allowed (got {stmts[0].type.name})")


# the columns each insight command stores (without COMPUTED_PREFIX), for the hint when one is named without it
_COMPUTED_NAMES = {"dup_group": "embedsearch duplicates", "dup_rank": "embedsearch duplicates",
                   "leak_of": "embedsearch leaks", "leak_sim": "embedsearch leaks",
                   "label_issue": "embedsearch label-issues", "suggested_label": "embedsearch label-issues",
                   "label_flagged": "embedsearch label-issues",
                   "outlier": "embedsearch outliers",
                   **{f"map_{m}_{a}": "embedsearch map" for m in ("umap", "pca", "tsne") for a in "xy"}}
_LITERAL = re.compile(r"'(?:[^']|'')*'")


def check_where(pred: str) -> None:
    """Refuse anything in a --where predicate beyond column comparisons and a few scalar functions."""
    if not pred.strip():
        raise QueryError("--where is empty")
    bare = _LITERAL.sub("''", pred)
    if bare.count("'") % 2:
        raise QueryError(f"--where {pred!r} has an unterminated string literal")
    for token, why in ((";", "multiple statements"), ("--", "comments"), ("/*", "comments"), ('"', "quoted identifiers")):
        if token in bare:
            raise QueryError(f"--where may not contain {token!r} ({why} are not allowed): {pred!r}")
    depth = 0
    for ch in bare:  # the predicate is combined with our own as `(scope) AND (where)`: it may not close the group
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            raise QueryError(f"--where {pred!r} closes a parenthesis it did not open")
    if depth:
        raise QueryError(f"--where {pred!r} has an unclosed parenthesis")
    if re.search(r"\bselect\b|\bfrom\b|\bunion\b", bare, re.I):
        raise QueryError(f"--where may not contain subqueries: {pred!r}")
    for fn in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", bare):
        if fn.lower() not in WHERE_FUNCTIONS:
            raise QueryError(f"--where may not call {fn}(); allowed: {', '.join(sorted(WHERE_FUNCTIONS - {'in', 'not', 'and', 'or', 'is', 'between'}))}")


def select_ids(con, where: str | None, columns: str = "id", scope: str | None = None, limit: int | None = None,
               offset: int = 0) -> list[tuple]:
    """Rows of `items` matching a user predicate `where` (checked; errors name it) within `scope`, a predicate of
    our own (e.g. the parts a reader serves), with unknown columns and type errors turned into QueryError; in id
    order, `limit` rows from `offset` when given."""
    import duckdb

    if where:
        check_where(where)
    preds = [f"({p})" for p in (scope, where) if p]
    sql = f"SELECT {columns} FROM items" + (" WHERE " + " AND ".join(preds) if preds else "")
    try:
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        return con.execute(sql + " ORDER BY id" + page).fetchall()
    except duckdb.BinderException as e:
        # only a missing column is "unknown column"; any other binder error (a type mismatch: `split + 1`,
        # `coalesce(text_column, 0)`) is DuckDB's own first line, which names the operator and the types
        m = (re.search(r'column "([^"]+)" not found', str(e), re.I)
             or re.search(r'does not have a column named "([^"]+)"', str(e), re.I))
        if m is None:
            raise QueryError(f"--where {where!r}: {first_line(str(e).removeprefix('Binder Error: '))}"
                             ) from None
        cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'items' ORDER BY ordinal_position").fetchall()]
        name = m.group(1)
        hint = ""
        if not name.lower().startswith(COMPUTED_PREFIX) and name.lower() in _COMPUTED_NAMES:
            hint = (f" (`{_COMPUTED_NAMES[name.lower()]}` stores it as {COMPUTED_PREFIX}{name.lower()}: computed "
                    f"columns carry the prefix {COMPUTED_PREFIX!r})")
        raise QueryError(f"--where {where!r}: unknown column {name!r}{hint}; columns: {', '.join(cols)}") from None
    except duckdb.Error as e:
        raise QueryError(f"--where {where!r}: {first_line(e)}") from None
