"""The catalog reads the routes need that `Index` does not offer yet, kept off the routes.

Each belongs in `Index` or the result store (named in its docstring); until then it lives here. The caller
holds the snapshot's lock."""

from embedsearch.reader import Index


def columns(ix: Index) -> list[str]:
    """The catalog's columns, in table order (→ `Index.columns()`)."""
    return [r[0] for r in ix.con.execute("DESCRIBE items").fetchall()]


def splits(ix: Index) -> list[str]:
    """The split names items carry, sorted (→ `Index.splits()`)."""
    return [r[0] for r in ix.con.execute(
        "SELECT DISTINCT split FROM items WHERE split IS NOT NULL ORDER BY 1").fetchall()]


def results(ix: Index, method: str | None = None) -> list[tuple]:
    """Stored evaluation results as (run_id, method, created, result JSON), oldest first; `method` filters
    (→ `ResultStore.rows()`)."""
    sql = ("SELECT r.run_id, r.method, r.created, r.result FROM results r "
           + ("WHERE r.method = ? " if method else "") + "ORDER BY r.created, r.run_id")
    return ix.con.execute(sql, [method] if method else []).fetchall()
