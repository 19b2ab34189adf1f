"""What an index's own files may make a reader do: FAISS's on-disk lists name a file, and that name is the index's
to choose (F3); a one-shot reader during `index --add` (F15); strict JSON out of `sql --json` (F17)."""

import json
import os
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.core.errors import IndexStateError
from embedsearch.query.search import search
from embedsearch.reader import Index
from tests.test_ondisk import FOLDER, _cli, _folder

SECRET = b"TOP-SECRET-" + bytes(range(256)) * 64


def _on_disk(tmp_path):
    root = tmp_path / "ix"
    _cli(root, str(_folder(tmp_path / "images", 300)), *FOLDER, "--on-disk")
    return root, root / "f"


def _rename_lists_inside_faiss(folder, lists: str, new_name: str):
    """Rewrite the lists file name stored inside index.faiss (same length: the file keeps its recorded size)."""
    assert len(new_name) == len(lists)
    data = (folder / "index.faiss").read_bytes()
    assert data.count(lists.encode()) == 1
    (folder / "index.faiss").write_bytes(data.replace(lists.encode(), new_name.encode()))
    return lists


@pytest.mark.parametrize("plant", ["symlink", "copy-in-folder", "absolute-path"])
def test_the_faiss_file_cannot_name_another_file(tmp_path, plant, monkeypatch):
    """The finding: a same-size index.faiss whose lists name is a link inside the folder; the bytes of the linked
    file came back as hit ids. Also: a plain file of another name in the folder, and an absolute path of the same
    length (FAISS opens a stored absolute path as it is unless told to look beside the index)."""
    import secrets

    root, folder = _on_disk(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    monkeypatch.setenv("EMBEDSEARCH_HOME", str(root))
    (lists,) = [f.name for f in folder.iterdir() if f.name.endswith(".ivfdata")]
    evil = "x" * (len(lists) - len(".ivfdata")) + ".ivfdata"
    if plant == "symlink":
        os.symlink(secret, folder / evil)
    elif plant == "copy-in-folder":
        (folder / evil).write_bytes((folder / lists).read_bytes())
    else:
        evil = "/tmp/" + secrets.token_hex(16)[: len(lists) - 5]
        os.symlink(secret, evil)
    try:
        _rename_lists_inside_faiss(folder, lists, evil)
        r = CliRunner().invoke(cli, ["search", "f", "--id", str(_first_id(root)), "-k", "50", "--json"])
        assert r.exit_code == 1, r.output
        assert "index.faiss" in r.output or "symbolic link" in r.output
        assert r.output.count("\n") == 1
        v = CliRunner().invoke(cli, ["verify", "f"])
        assert v.exit_code == 1  # verify does not call it sound either
    finally:
        if evil.startswith("/tmp/"):
            os.unlink(evil)


def _first_id(root):
    import duckdb

    con = duckdb.connect(str(root / "f" / "catalog.duckdb"), read_only=True)
    try:
        return con.execute("SELECT min(id) FROM items WHERE status = 'ok'").fetchone()[0]
    finally:
        con.close()


def test_a_link_anywhere_in_the_index_folder_is_refused_on_open(tmp_path, monkeypatch):
    root, folder = _on_disk(tmp_path)
    os.symlink("/etc/hostname", folder / "notes.txt")
    with pytest.raises(IndexStateError, match="symbolic link"):
        Index.open(folder)


@pytest.mark.slow
def test_one_shot_searches_during_add_on_an_on_disk_index_all_answer(tmp_path):
    """F15: 3 of 9 one-shot searches during `index --add` failed 'index.faiss was replaced'. Each search here opens
    the index afresh, as the CLI does, while a real `index --add` runs in another process."""
    root, folder = _on_disk(tmp_path)
    _folder(tmp_path / "images", 900, start=300)
    env = {**os.environ, "EMBEDSEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1"}
    add = subprocess.Popen([sys.executable, "-m", "embedsearch", "-q", "index", str(tmp_path / "images"), *FOLDER,
                            "--add"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    qid = _first_id(root)
    errors, answered = [], 0
    stop = threading.Event()

    def watch():
        add.wait()
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    while not stop.is_set():
        try:
            ix = Index.open(folder)
            assert len(search(ix, ids=[qid], k=5)) == 5
            ix.close()
            answered += 1
        except IndexStateError as e:
            errors.append(str(e))
    assert add.returncode == 0, add.stderr[-2000:]
    assert answered >= 3 and not errors, (answered, errors[:3])
    assert Index.open(folder).manifest.rows == 1200


def test_sql_json_is_strict_json(tmp_path, index_root):
    r = CliRunner().invoke(cli, ["index", "digits", "-b", "pixels:4", "-n", "d", "--workers", "0"])
    assert r.exit_code == 0, r.output
    for fmt in ("--json", "--nl"):
        r = CliRunner().invoke(cli, ["sql", "d", "SELECT 'inf'::DOUBLE AS a, '-inf'::DOUBLE AS b, 'nan'::DOUBLE AS c, "
                                     "1.5::DOUBLE AS d", fmt])
        assert r.exit_code == 0, r.output
        assert "Infinity" not in r.output and "NaN" not in r.output
        row = json.loads(r.output)[0] if fmt == "--json" else json.loads(r.output.splitlines()[0])
        assert row == {"a": None, "b": None, "c": None, "d": 1.5}
