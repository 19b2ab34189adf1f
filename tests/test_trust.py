"""A shared index never makes this machine run code or fetch anything (issue F1), and an edited `py:` file is never
used silently (F7): the code gate of models/code.py, through the CLI, as a person who received an index would meet it.

Each hostile model file writes a sentinel at import: a test that sees the sentinel saw code run."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.core import trust

MODEL = '''
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))

def make():
    return Net()
'''

EVIL = '''
import pathlib
pathlib.Path({sentinel!r}).write_text("code ran")
from torch import nn
def make():
    return nn.Conv2d(3, 4, 3)
'''


def run(*args, cwd=None):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return r


@pytest.fixture
def built(tmp_path, image_folder, index_root, monkeypatch):
    """An index built from the user's own models/m.py, by the CLI, from a working directory holding it."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "m.py").write_text(MODEL)
    monkeypatch.chdir(work)
    r = run("index", image_folder, "-b", "py:models/m.py:make", "--random-init", "--image-size", "16",
            "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "-n", "mine", "--dtype", "float32", "--precision", "fp32",
            "--workers", "0")
    assert r.exit_code == 0, r.output
    return work


def _query(image_folder):
    return next((image_folder / "test" / "red").glob("*.png"))


def _new_machine(tmp_path, monkeypatch):
    """The same index, opened by someone who never ran its code: an empty trust file."""
    monkeypatch.setenv("EMBEDSEARCH_TRUST_FILE", str(tmp_path / "other-user-trust.json"))


def _point_spec_at(index_root, spec: str, **backbone):
    """Edit every copy of the backbone spec in the manifest, as a hostile sharer would."""
    m = index_root / "mine" / "manifest.json"
    d = json.loads(m.read_text())
    d["space"]["spec"] = d["backbone"]["spec"] = d["build"]["backbone"]["spec"] = spec
    d["backbone"].update(backbone)
    m.write_text(json.dumps(d))


def test_the_builder_queries_by_image_without_a_flag_and_gets_the_stored_vector(built, image_folder, index_root):
    r = run("search", "mine", "--image", _query(image_folder), "-k", "1", "--json")
    assert r.exit_code == 0, r.output
    hit = json.loads(r.output)[0]
    assert hit["score"] == pytest.approx(1.0, abs=1e-5)  # the query image is indexed: its own vector comes back
    ident = json.loads((index_root / "mine" / "manifest.json").read_text())["backbone"]["code_identity"]
    assert ident == f"py:{built / 'models' / 'm.py'}:make"


def test_someone_else_s_index_runs_no_code_until_they_trust_it(built, image_folder, index_root, tmp_path,
                                                               monkeypatch):
    _new_machine(tmp_path, monkeypatch)
    r = run("search", "mine", "--image", _query(image_folder), "-k", "1")
    assert r.exit_code == 1
    assert "code you have not run on this machine" in r.output and "--trust-code" in r.output
    assert r.output.count("\n") == 1  # one line
    v = run("verify", "mine")
    assert v.exit_code == 0 and "warning:" in v.output and "--trust-code" in v.output
    r = run("search", "mine", "--image", _query(image_folder), "-k", "1", "--trust-code")
    assert r.exit_code == 0, r.output
    assert trust.is_trusted_code(f"py:{built / 'models' / 'm.py'}:make",
                                 json.loads((index_root / "mine" / "manifest.json").read_text())["backbone"]
                                 ["code_sha256"])
    assert run("search", "mine", "--image", _query(image_folder), "-k", "1").exit_code == 0  # remembered


@pytest.mark.parametrize("how", ["py-file", "py-module", "os-abort", "hub-dir"])
def test_a_manifest_naming_other_code_never_runs_it(built, image_folder, index_root, tmp_path, how):
    """The finding's repro: the spec pointed at a file whose top level writes a file; also an installed callable
    (`py:os:abort` killed the server) and a local hubconf.py. Refused by search, classify and verify --repair, with
    and without a matching recorded hash; nothing runs."""
    sentinel = tmp_path / "sentinel"
    evil = tmp_path / "shared"
    evil.mkdir()
    (evil / "model.py").write_text(EVIL.format(sentinel=str(sentinel)))
    (evil / "hubconf.py").write_text(EVIL.format(sentinel=str(sentinel)))
    (evil / "evil_mod.py").write_text(EVIL.format(sentinel=str(sentinel)))
    spec = {"py-file": f"py:{evil / 'model.py'}:make", "py-module": "py:evil_mod:make", "os-abort": "py:os:abort",
            "hub-dir": f"hub:{evil}:make"}[how]
    sys.path.insert(0, str(evil))
    try:
        for recorded in (None, "matching"):
            extra = {}
            if recorded:  # the hostile sharer even records the right hash: still code this user never ran
                from embedsearch.models.code import code_ref
                from embedsearch.models.specs import parse_backbone

                ref = code_ref(parse_backbone(spec))
                extra = {"code_sha256": ref.sha256, "code_path": str(ref.path) if ref.path else None}
            _point_spec_at(index_root, spec, **extra)
            for args in (("search", "mine", "--image", _query(image_folder)),
                         ("classify", "mine", "--probe", "prototypes", _query(image_folder))):
                r = run(*args)
                assert r.exit_code == 1, (args, r.output)
                assert not sentinel.exists(), (args, recorded)
            # a repair that must re-embed: refused before anything is deleted
            part = next((index_root / "mine" / "parts").glob("*.parquet"))
            saved = part.read_bytes()
            part.write_bytes(saved[:-10] + b"0123456789")
            r = run("verify", "mine", "--repair")
            assert r.exit_code == 1 and not sentinel.exists(), r.output
            assert part.read_bytes()[-10:] == b"0123456789"  # nothing was changed
            part.write_bytes(saved)
    finally:
        sys.path.remove(str(evil))
        sys.modules.pop("evil_mod", None)
    assert not sentinel.exists()


def test_a_hub_repository_is_never_downloaded_for_an_index(built, image_folder, index_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    _point_spec_at(index_root, "hub:someone/repo:make", code_sha256="0" * 64)
    import torch.hub

    def no_network(*a, **k):
        raise AssertionError("torch.hub tried to fetch")

    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", no_network)
    r = run("search", "mine", "--image", _query(image_folder), "--trust-code")
    assert r.exit_code == 1 and "never downloaded" in r.output, r.output


def test_an_edited_model_file_is_noticed_by_queries_add_and_verify(built, image_folder, index_root):
    f = built / "models" / "m.py"
    f.write_text(MODEL.replace(".mean((2, 3))", ".amax((2, 3))"))  # another forward: another space
    r = run("search", "mine", "--image", _query(image_folder))
    assert r.exit_code == 1 and "changed since index mine was built" in r.output, r.output
    v = run("verify", "mine")
    assert v.exit_code == 1 and "code changed" in v.output, v.output
    r = run("index", image_folder, "-b", "py:models/m.py:make", "--random-init", "--image-size", "16",
            "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "-n", "mine", "--dtype", "float32", "--precision",
            "fp32", "--workers", "0", "--add")
    assert r.exit_code == 1 and "changed since index mine was built" in r.output, r.output
    f.write_text(MODEL)  # restored: all is well again
    assert run("verify", "mine").exit_code == 0


def test_a_query_from_another_directory_uses_the_recorded_file(built, image_folder, index_root, tmp_path,
                                                              monkeypatch):
    """Before, `models/m.py` was resolved against the working directory: another project's models/m.py ran."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    sentinel = tmp_path / "sentinel"
    (elsewhere / "models" / "m.py").write_text(EVIL.format(sentinel=str(sentinel)))
    monkeypatch.chdir(elsewhere)
    r = run("search", "mine", "--image", _query(image_folder), "-k", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert not sentinel.exists()


def test_trust_file_is_never_inside_an_index_and_roots_are_lexical(tmp_path, monkeypatch):
    monkeypatch.delenv("EMBEDSEARCH_TRUST_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert trust.trust_file() == tmp_path / "cfg" / "embedsearch" / "trust.json"
    trust.trust_root(tmp_path / "data")
    assert trust.within(tmp_path / "data" / "a" / "b.png", trust.trusted_roots())
    assert not trust.within(tmp_path / "data" / ".." / "secret.png", trust.trusted_roots())
    assert not trust.within(tmp_path / "database.png", trust.trusted_roots())  # a prefix is not a parent
    assert not trust.within("/etc/passwd", trust.trusted_roots())


def test_a_broken_trust_file_is_one_line(tmp_path, monkeypatch, image_folder, index_root):
    f = tmp_path / "t.json"
    f.write_text("{not json")
    monkeypatch.setenv("EMBEDSEARCH_TRUST_FILE", str(f))
    r = run("index", image_folder, "-b", "pixels:4", "-n", "p", "--workers", "0")
    assert r.exit_code == 1 and "trust file" in r.output and str(f) in r.output


def test_vectors_are_unchanged_by_the_gate(built, image_folder, index_root):
    """The pinned path runs the same bytes: a query's vector equals the stored one (not only the top hit)."""
    from embedsearch.query.search import query_vectors
    from embedsearch.reader import Index

    ix = Index.open("mine")
    q = _query(image_folder)
    _, v = query_vectors(ix, images=[str(q)])
    hit = ix.select(where=f"path LIKE '%{q.name}'")
    stored = ix.vectors(np.asarray(hit["id"]))
    np.testing.assert_allclose(v[0] / np.linalg.norm(v[0]), stored[0] / np.linalg.norm(stored[0]), atol=1e-5)
    shutil.rmtree(Path(built) / "models" / "__pycache__", ignore_errors=True)


def test_any_spec_a_manifest_can_hold_is_refused_or_checked_without_running_anything(tmp_path):
    """Property: whatever spec and recorded fields a hostile manifest holds, the gate answers with one of the
    package's errors (or lets through a kind that runs no code of the user's), and never imports or runs a thing."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from embedsearch.core.errors import EmbedsearchError
    from embedsearch.models.code import CODE_KINDS, check_reattach

    sentinel = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(EVIL.format(sentinel=str(sentinel)))
    (tmp_path / "hubconf.py").write_text(EVIL.format(sentinel=str(sentinel)))
    names = st.sampled_from([str(tmp_path / "evil.py"), "evil.py", "os", "subprocess", "shutil", "builtins",
                             str(tmp_path), "owner/repo", "../evil.py", "~/x.py", "a.b.c", "", "/"])
    kinds = st.sampled_from(["py", "hub", "timm", "open_clip", "torchvision", "hf", "ckpt", "module", "pixels", "x"])
    entries = st.sampled_from(["make", "abort", "system", "rmtree", "exec", "", "a b"])
    recorded = st.fixed_dictionaries({}, optional={"code_sha256": st.one_of(st.none(), st.text(max_size=64),
                                                                              st.sampled_from(["0" * 64])),
                                                   "code_path": st.one_of(st.none(), names)})
    before = set(sys.modules)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(kinds, names, entries, recorded)
    def check(kind, name, entry, rec):
        spec = f"{kind}:{name}:{entry}" if kind in ("py", "hub") else f"{kind}:{name}"
        try:
            s = check_reattach(spec, rec, "shared")
            assert s.kind not in CODE_KINDS or rec.get("code_sha256")  # only verified code passes
        except EmbedsearchError as e:
            assert "\n" not in str(e)
        assert not sentinel.exists()

    sys.path.insert(0, str(tmp_path))
    try:
        check()
    finally:
        sys.path.remove(str(tmp_path))
    assert not sentinel.exists()
    assert "evil" not in set(sys.modules) - before


def test_serve_trust_code_trusts_what_each_served_index_recorded(built, image_folder, index_root, tmp_path,
                                                                   monkeypatch):
    """`serve --trust-code`: the served indexes' code is checked against its recorded hash and trusted, so image
    uploads can run it; an index whose code changed since is refused at start-up."""
    from embedsearch.cli import _trust_served_code
    from embedsearch.core.errors import IndexStateError
    from embedsearch.reader import Index
    from embedsearch.serve.snapshots import Registry

    _new_machine(tmp_path, monkeypatch)
    ix = Index.open("mine")
    with pytest.raises(Exception, match="--trust-code"):
        ix.backbone()
    _trust_served_code(Registry(index_root, ["mine"]))
    assert Index.open("mine").backbone().dim == 4  # now trusted on this machine
    (built / "models" / "m.py").write_text(MODEL + "\n# edited\n")
    with pytest.raises(IndexStateError, match="changed since index mine was built"):
        _trust_served_code(Registry(index_root, ["mine"]))
