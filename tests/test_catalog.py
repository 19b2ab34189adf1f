import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.errors import QueryError
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source
from embedsearch.store.catalog import check_where


@pytest.fixture(scope="module")
def ix(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat")
    src = open_source("digits")
    src.records = src.records[:40]
    build_index(src, BuildConfig.of(name="d", root=str(root), backbone="pixels:4", num_workers=0), progress=False)
    return Index.open("d", root)


def test_catalog_tables_and_embeddings_view(ix):
    _, rows = ix.sql("SELECT count(*) FROM items i JOIN embeddings e USING (id) WHERE i.split = 'train'")
    assert rows[0][0] == sum(1 for s in ix.select()["split"] if s == "train")
    _, rows = ix.sql("SELECT name FROM classes ORDER BY class_index")
    assert [r[0] for r in rows] == [str(i) for i in range(10)]
    _, rows = ix.sql("SELECT value FROM meta WHERE key = 'schema_version'")
    assert rows == [("1",)]
    _, rows = ix.sql("SELECT kind, status FROM runs")
    assert rows == [("index", "complete")]


def test_where_selects(ix):
    sel = ix.select("split = 'test' AND label IN ('1', '2')")
    assert len(sel["id"]) > 0 and set(sel["label"]) <= {"1", "2"} and set(sel["split"]) == {"test"}


@pytest.mark.parametrize("pred,match", [
    ("1=1; DROP TABLE items", "multiple statements"),
    ("label = 'x' -- comment", "comments"),
    ("label = 'x' /* c */", "comments"),
    ("id IN (SELECT id FROM items)", "subqueries"),
    ("read_csv('/etc/passwd') IS NOT NULL", "may not call read_csv"),
    ("no_such_column = 1", "unknown column 'no_such_column'"),
    ("label = 'unterminated", "unterminated"),
    ("1=1) OR (1=1", "closes a parenthesis"),  # would escape the reader's own scope (served parts, status ok)
    ("(label = '1'", "unclosed parenthesis"),
])
def test_where_injection_attempts_are_clear_errors(ix, pred, match):
    with pytest.raises(QueryError, match=match):
        ix.select(pred)


@pytest.mark.parametrize("q,match", [
    ("DROP TABLE items", "only SELECT"),
    ("SELECT 1; DROP TABLE items", "exactly one"),
    ("COPY items TO 'x.csv'", "only SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
    ("SELECT * FROM read_parquet('/tmp/*.parquet')", "disabled by configuration"),
])
def test_sql_is_read_only_and_cannot_reach_files(ix, q, match):
    with pytest.raises(QueryError, match=match):
        ix.sql(q)
    assert ix.sql("SELECT count(*) FROM items")[1] == [(40,)]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_where_checker_never_lets_statements_or_file_access_through(text):
    try:
        check_where(text)
    except QueryError:
        return
    bare = text.lower()
    assert ";" not in text and "--" not in text and "/*" not in text
    assert "read_" not in bare.replace(" ", "") or "(" not in bare


# --------------------------------------------------------------------------------------------- --where vs DuckDB

_COLS = {"label": st.sampled_from(["'1'", "'2'", "'7'", "'x'", "'O''Brien'"]),
         "split": st.sampled_from(["'train'", "'test'", "''"]),
         "class_index": st.integers(-2, 11).map(str),
         "width": st.integers(0, 10).map(str),
         "path": st.sampled_from(["'digits/0'", "'%1%'", "NULL"])}
_HOSTILE = ["; DROP TABLE items", " -- x", " /* x */", " OR id IN (SELECT id FROM items)", " OR read_csv('x') IS NULL",
            " OR getenv('HOME') = ''", "; ATTACH 'x.db'", "; COPY items TO 'x.csv'", " OR \"label\" = '1'", "'", ") OR (1=1"]


@st.composite
def _comparison(draw):
    col = draw(st.sampled_from(sorted(_COLS)))
    lit = draw(_COLS[col])
    op = draw(st.sampled_from(["=", "!=", "<", ">=", "IN", "LIKE", "IS NULL"] if col in ("label", "path", "split")
                              else ["=", "!=", "<", ">=", "IN", "BETWEEN"]))
    if op == "IN":
        return f"{col} IN ({lit}, {draw(_COLS[col])})"
    if op == "BETWEEN":
        return f"{col} BETWEEN {lit} AND {draw(_COLS[col])}"
    if op == "IS NULL":
        return f"{col} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    if op == "LIKE" and lit == "NULL":
        lit = "'%'"
    return f"lower({col}) {op} {lit}" if op == "LIKE" else f"{col} {op} {lit}"


_predicate = st.recursive(_comparison(), lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    inner.map(lambda p: f"NOT ({p})")), max_leaves=4)


@pytest.fixture(scope="module")
def raw_items(ix):
    """An independent in-memory DuckDB copy of the items table, queried with no checker at all."""
    import duckdb

    con = duckdb.connect()
    cols, rows = ix.sql("SELECT * FROM items")
    con.execute("CREATE TABLE items AS SELECT * FROM (VALUES " + ", ".join(["(" + ", ".join("?" * len(cols)) + ")"]
                * len(rows)) + f") t({', '.join(cols)})", [v for r in rows for v in r])
    return con


@settings(max_examples=150, deadline=None)
@given(_predicate, st.one_of(st.none(), st.sampled_from(_HOSTILE)))
def test_where_equals_duckdb_on_safe_predicates_and_refuses_hostile_ones(ix, raw_items, pred, hostile):
    n_before = ix.sql("SELECT count(*) FROM items")[1][0][0]
    text = pred if hostile is None else pred + hostile
    try:
        got = ix.select(text)["id"].tolist()
    except QueryError:
        assert hostile is not None, f"a plain predicate was refused: {text}"
        return
    assert hostile is None, f"a hostile predicate went through: {text}"
    want = [r[0] for r in raw_items.execute(f"SELECT id FROM items WHERE status = 'ok' AND ({text}) ORDER BY id")
            .fetchall()]
    assert got == want, text
    assert ix.sql("SELECT count(*) FROM items")[1][0][0] == n_before


def _big_catalog(path, n=300_000):
    """A catalog file of n items with long paths (~12 MB on disk, ~33 MB once copied into memory)."""
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute(f"CREATE TABLE items AS SELECT range AS id, 'img/' || md5(range::VARCHAR) || md5((range + 1)::VARCHAR)"
                f" AS path, 'ok' AS status, (range % 100)::INTEGER AS part FROM range({n})")
    con.close()


def test_opening_reads_the_catalog_in_place_not_a_copy_in_memory(tmp_path, monkeypatch):
    """Opening costs the same memory whatever the catalog's size: DuckDB reads the snapshot's blocks on demand (the
    copy into memory held 33 MB of this 12 MB catalog, and scaled with it). The snapshot file is private and gone
    from the folder at once, and a writer, in this process or another, is not blocked by the open reader."""
    import os
    import tempfile

    from embedsearch.store.catalog import Catalog, connect_readonly

    path = tmp_path / "catalog.duckdb"
    _big_catalog(path)
    (tmp_path / "temp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))  # where the snapshot is made
    con = connect_readonly(path, [])
    held = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
    assert held < path.stat().st_size / 4, (held, path.stat().st_size)
    assert con.execute("SELECT count(*), max(id) FROM items").fetchone() == (300_000, 299_999)
    assert os.listdir(tmp_path / "temp") == []
    with Catalog(path).write() as w:  # the reader holds no lock on the catalog
        w.execute("DELETE FROM items WHERE id < 10")
    assert con.execute("SELECT count(*) FROM items").fetchone() == (300_000,)  # it reads its snapshot
    con.close()


def test_each_thread_queries_the_snapshot_through_its_own_connection(ix):
    """A server's requests run in threads: a long query in one does not hold up another's (one shared DuckDB
    connection runs one query at a time), and all of them read the same snapshot."""
    import threading
    import time

    started, done = threading.Event(), {}

    def slow():
        done["con"] = ix.con
        started.set()
        try:
            done["con"].execute("SELECT count(*) FROM range(20000000000) WHERE hash(range) = 0").fetchall()
        except Exception as e:  # noqa: BLE001 — interrupted below
            done["error"] = type(e).__name__

    t = threading.Thread(target=slow)
    t.start()
    started.wait(10)
    time.sleep(0.3)  # the slow query is running
    t0 = time.monotonic()
    got = []
    other = threading.Thread(target=lambda: got.append(ix.con.execute("SELECT count(*) FROM items").fetchone()[0]))
    other.start()
    other.join(10)
    waited = time.monotonic() - t0
    running = t.is_alive()
    done["con"].interrupt()
    t.join(30)
    assert got == [len(ix.select(embedded_only=False)["id"])] and waited < 5, waited
    assert running and done.get("error") == "InterruptException"  # the fast query did not wait for the slow one
    assert done["con"] is not ix.con
