"""`embedsearch sql`: every column kept, rows streamed, bounded in time and memory, Ctrl-C is exit 130; and a reader
that keeps its connection (or a slow consumer) never blocks a writer."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from embedsearch.build import BuildConfig, build_index
from embedsearch.cli import cli
from embedsearch.reader import Index, unique_names
from embedsearch.sources.datasets import open_source

HEAVY = "SELECT sum(hash(range)) FROM range(1000000000000)"  # minutes of work, one row


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("sql")
    build_index(open_source("digits"), BuildConfig(name="d", root=str(r), backbone="pixels:4", num_workers=0),
                progress=False)
    return r


def _sql(root, *args):
    return CliRunner().invoke(cli, ["sql", "d", *args, "--root", str(root)])


@pytest.mark.parametrize("fmt", ["--json", "--nl", "--csv", None])
def test_repeated_column_names_are_all_kept(root, fmt):
    r = _sql(root, "SELECT 1 AS x, 2 AS x, a.id, b.id FROM items a JOIN items b ON b.id = a.id + 1 "
             "ORDER BY a.id LIMIT 1", *([fmt] if fmt else []))
    assert r.exit_code == 0, r.output
    if fmt == "--json":
        assert json.loads(r.stdout) == [{"x": 1, "x_2": 2, "id": 0, "id_2": 1}]
    elif fmt == "--nl":
        assert json.loads(r.stdout) == {"x": 1, "x_2": 2, "id": 0, "id_2": 1}
    elif fmt == "--csv":
        assert r.stdout.splitlines() == ["x,x_2,id,id_2", "1,2,0,1"]
    else:
        assert r.stdout.split("\n")[0].split() == ["x", "x_2", "id", "id_2"]
        assert r.stdout.split("\n")[2].split() == ["1", "2", "0", "1"]


def test_unique_names_never_reuse_an_existing_name():
    assert unique_names(["x", "x", "x_2", "y", "y"]) == ["x", "x_3", "x_2", "y", "y_2"]


def test_rows_stream_before_the_query_has_produced_the_last(root):
    """A trillion rows: the first ones arrive (fetching them all first would never end, or run out of memory)."""
    ix = Index.open("d", root)
    cols, rows = ix.sql_stream("SELECT range AS n FROM range(1000000000000)", timeout_s=30)
    assert cols == ["n"] and [next(rows)[0] for _ in range(3)] == [0, 1, 2]
    ix.close()


def test_a_query_past_its_time_limit_stops_with_one_line(root):
    r = _sql(root, HEAVY, "--timeout", "0.5")
    assert r.exit_code == 1 and "time limit (0.5 s)" in r.output and "Traceback" not in r.output


def test_a_query_past_its_memory_limit_stops_with_one_line(root):
    r = _sql(root, "SELECT list(range) FROM range(100000000) GROUP BY range % 7", "--memory-limit", "100MB")
    assert r.exit_code == 1 and "memory limit (100MB)" in r.output
    assert _sql(root, "SELECT 1", "--memory-limit", "lots").exit_code == 2  # a bad size: a usage error


@pytest.mark.parametrize("query,fmt", [(HEAVY, "--json"), ("SELECT range FROM range(1000000000000)", "--nl")])
def test_ctrl_c_is_exit_130_without_a_traceback(root, query, fmt):
    p = subprocess.Popen([sys.executable, "-m", "embedsearch", "sql", "d", query, fmt, "--root", str(root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if fmt == "--nl":
        p.stdout.readline()  # streaming has begun
    else:
        time.sleep(3)  # the query is running (it takes minutes)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err


def test_writers_finish_while_readers_hold_connections_and_consume_slowly(tmp_path, image_folder):
    """Two readers outlive every writer: one keeps an Index open mid-query, one streams rows into a pipe nobody
    reads. `index --add`, `eval` and `verify --repair` (each a catalog writer) all finish."""
    from tests.conftest import make_image

    root = tmp_path / "ix"
    build_index(open_source(str(image_folder)), BuildConfig(name="v", root=str(root), backbone="pixels:4",
                part_size=8, num_workers=0), progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from embedsearch.reader import Index; ix = Index.open('v', sys.argv[1]);"
         " cols, rows = ix.sql_stream('SELECT * FROM items, range(1000000)', timeout_s=None); next(rows);"
         " print('holding', flush=True); time.sleep(600)", str(root)],
        stdout=subprocess.PIPE, text=True)
    slow = subprocess.Popen([sys.executable, "-m", "embedsearch", "sql", "v", "SELECT * FROM items, range(1000000)",
                             "--nl", "--timeout", "600", "--root", str(root)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "holding"
        slow.stdout.read(4096)  # it is streaming; from now on nobody reads, so its pipe fills and it blocks
        r = CliRunner()
        make_image(image_folder / "train" / "red" / "extra.png", (210, 20, 20), seed=7)
        res = r.invoke(cli, ["-q", "index", str(image_folder), "--name", "v", "--root", str(root), "--backbone", "pixels:4",
                             "--part-size", "8", "--workers", "0", "--add"])
        assert res.exit_code == 0, res.output
        res = r.invoke(cli, ["-q", "eval", "v", "--root", str(root), "--methods", "prototypes,knn"])
        assert res.exit_code == 0, res.output
        (root / "v" / "parts" / "part-00001.parquet").unlink()
        res = r.invoke(cli, ["-q", "verify", "v", "--root", str(root), "--repair"])
        assert res.exit_code == 0, res.output
        assert holder.poll() is None and slow.poll() is None  # both readers were there all along
    finally:
        for p in (holder, slow):
            p.kill()
            p.wait()
    ix = Index.open("v", root)
    assert ix.sql("SELECT count(*) FROM items WHERE path LIKE '%extra.png'")[1] == [(1,)]
    assert ix.sql("SELECT count(DISTINCT run_id) FROM results")[1][0][0] >= 1
    assert os.path.exists(root / "v" / "parts" / "part-00001.parquet")
