import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.core.openmp import GOMP_SPINCOUNT, short_openmp_waits


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))


def test_every_command_has_help_with_an_example():
    for path, cmd in _commands(cli):
        assert cmd.help and "Example" in cmd.help, f"{' '.join(path)} needs help text with an example"
        r = CliRunner().invoke(cli, [*path, "--help"])
        assert r.exit_code == 0


def test_index_info_sql_flow(index_root):
    r = CliRunner().invoke(cli, ["-q", "index", "digits", "-b", "pixels:8", "-n", "d8", "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["items"] == 1797 and summary["embedded"] == 1797
    r = CliRunner().invoke(cli, ["info", "d8", "--json"])
    assert json.loads(r.stdout)["dim"] == 192
    r = CliRunner().invoke(cli, ["sql", "d8", "SELECT split, count(*) AS n FROM items GROUP BY split ORDER BY split", "--csv"])
    assert r.stdout.splitlines() == ["split,n", "test,450", "train,1347"]


def test_errors_are_one_line_with_exit_1(index_root):
    r = CliRunner().invoke(cli, ["info", "nope"])
    assert r.exit_code == 1 and r.stderr.startswith("error: no index at") and r.stderr.count("\n") == 1
    r = CliRunner().invoke(cli, ["index", "digits", "-b", "foo:bar"])
    assert r.exit_code == 1 and "unknown backbone 'foo:bar'" in r.stderr
    r = CliRunner().invoke(cli, ["index", "digits", "--dtype", "int8"])
    assert r.exit_code == 2  # usage error


@pytest.mark.slow
def test_real_subprocess_main_flow(tmp_path, image_folder):
    env = {"EMBEDSEARCH_HOME": str(tmp_path / "ix"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    def run(*a):
        return subprocess.run([sys.executable, "-m", "embedsearch", *a], capture_output=True, text=True, env=env)
    p = run("index", str(image_folder), "-b", "timm:test_vit", "--random-init", "-n", "f", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["embedded"] == 33
    p = run("sql", "f", "SELECT label, count(*) AS n FROM items GROUP BY 1 ORDER BY 1", "--json")
    assert [r["n"] for r in json.loads(p.stdout)] == [11, 11, 11]


def test_eval_methods_take_spaces_and_come_from_the_method_registry(index_root):
    """`--methods "knn, prototypes"` failed (the names were split without the spaces); the choices are the
    registry's names, run in its order whatever order they are given in."""
    from embedsearch.evaluate.methods import ORDER

    r = CliRunner()
    assert r.invoke(cli, ["-q", "index", "digits", "-b", "pixels:4", "-n", "m4", "--workers", "0"]).exit_code == 0
    res = r.invoke(cli, ["-q", "eval", "m4", "--methods", "knn, prototypes", "--json"])
    assert res.exit_code == 0, res.output
    assert [x["method"] for x in json.loads(res.stdout)] == ["prototypes", "knn", "knn"]  # kNN: two votes
    bad = r.invoke(cli, ["-q", "eval", "m4", "--methods", "knn, svm"])
    assert bad.exit_code == 2 and "unknown method 'svm': expected one of " + ", ".join(ORDER) in bad.output
    assert "[" + "|".join(ORDER) + "]" in r.invoke(cli, ["eval", "--help"]).output


def test_eval_report_compare_search_flow(index_root):
    r = CliRunner()
    for name, bb in (("px8", "pixels:8"), ("px4", "pixels:4")):
        assert r.invoke(cli, ["-q", "index", "digits", "-b", bb, "-n", name, "--workers", "0"]).exit_code == 0
        res = r.invoke(cli, ["-q", "eval", name, "-m", "prototypes,knn"])
        assert res.exit_code == 0, res.output
        assert "| knn | weighted k=20, T=0.07 |" in res.stdout and "1000 resamples of the test set" in res.stdout
    res = r.invoke(cli, ["report", "px8", "px4", "--json"])
    rows = json.loads(res.stdout)
    assert {(x["index"], x["method"]) for x in rows} >= {("px8", "knn"), ("px4", "prototypes")}
    assert len(list((index_root / "px8" / "reports").glob("eval-*-[0-9][0-9]-*.json"))) == 3  # one per result
    summary = json.loads(next((index_root / "px8" / "reports").glob("eval-????????????.json")).read_text())
    assert [t["method"] for t in summary["timings"]] == ["prototypes", "knn"]
    assert all(t["seconds"] > 0 and t["estimate_s"] > 0 for t in summary["timings"])
    res = r.invoke(cli, ["compare", "px8", "px4", "--json"])
    pairs = json.loads(res.stdout)["pairs"]
    p = next(x for x in pairs if x["method"] == "prototypes")
    assert p["n_common"] == 450 and 0 <= p["mcnemar_p"] <= 1
    assert p["a_wrong_b_right"] + p["both_wrong"] == round((1 - p["top1_a"]) * 450)
    res = r.invoke(cli, ["search", "px8", "--id", "0", "-k", "3", "--where", "split = 'train'", "--json"])
    assert [x["rank"] for x in json.loads(res.stdout)] == [1, 2, 3]
    res = r.invoke(cli, ["search", "px8", "--id", "0", "--where", "1=1; DROP TABLE items"])
    assert res.exit_code == 1 and "multiple statements" in res.stderr


@pytest.mark.slow
def test_quickstart_end_to_end_offline(index_root):
    r = CliRunner().invoke(cli, ["-q", "quickstart", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert "quickstart-pixels (a) vs quickstart-vit (b)" in r.stdout and "mcnemar_p" in r.stdout
    for name in ("quickstart-pixels", "quickstart-vit"):
        assert list((index_root / name / "reports").glob("eval-*.html"))
    assert (index_root / "quickstart-ckpt" / "digits-infonce.loss.png").exists()


@pytest.mark.parametrize("cmd", [["search", "x", "--id", "0", "-k", "0"], ["search", "x", "--id", "0", "-k", "-1"],
                                 ["classify", "x", "linear", "f.png", "-k", "-1"]])
def test_k_is_validated_before_any_work(cmd):
    res = CliRunner().invoke(cli, cmd)
    assert res.exit_code == 2 and "'-k'" in res.output and "not in the range x>=1" in res.output


@pytest.mark.parametrize("args", [
    ["index", "digits", "--part-size", "0"], ["index", "digits", "--part-size", "-5"],
    ["index", "digits", "--batch-size", "0"], ["index", "digits", "--workers", "-1"],
    ["index", "digits", "--image-size", "0"],
    ["pretrain", "digits", "-o", "x", "--lr", "nan"], ["pretrain", "digits", "-o", "x", "--lr", "0"],
    ["pretrain", "digits", "-o", "x", "--epochs", "0"], ["pretrain", "digits", "-o", "x", "--mask-ratio", "1"],
    ["pretrain", "digits", "-o", "x", "--temperature", "inf"], ["sql", "x", "SELECT 1", "--timeout", "0"],
    ["eval", "x", "--html", "no-such-folder/r.html"], ["search", "x", "--id", "1", "--html", "no-such-folder/s.html"],
])
def test_bad_arguments_are_usage_errors_before_any_work(tmp_path, args):
    where = ["--device", "cpu"] if args[0] == "pretrain" else ["--root", str(tmp_path)]
    r = CliRunner().invoke(cli, [*args, *where])
    assert r.exit_code == 2 and "Invalid value" in r.output, r.output
    assert not any(tmp_path.iterdir())  # nothing was written


@pytest.mark.parametrize("extra,msg", [(["--heads", "5"], "--heads 5 does not divide the width 64"),
                                       (["--method", "infonce", "--batch-size", "1"], "InfoNCE needs --batch-size")])
def test_pretrain_settings_that_cannot_train_are_refused_up_front(tmp_path, extra, msg):
    r = CliRunner().invoke(cli, ["pretrain", "digits", "-o", str(tmp_path / "c"), "--epochs", "1", *extra])
    assert r.exit_code == 1 and msg in r.output, r.output
    assert not any(tmp_path.iterdir())


def test_index_names_cannot_escape_the_root_and_an_explicit_root_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("..", "."):
        r = CliRunner().invoke(cli, ["-q", "index", "digits", "-b", "pixels:8", "--name", bad, "--workers", "0"])
        assert r.exit_code == 1 and "is not an index name" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a folder `a` in the working directory holding an index, and another index `a` under --root r
    for root, n in ((tmp_path, 100), (tmp_path / "r", 200)):
        from embedsearch.build import BuildConfig, build_index
        from embedsearch.sources.datasets import open_source

        s = open_source("digits")
        s.records = s.records[:n]
        build_index(s, BuildConfig.of(name="a", root=str(root), backbone="pixels:8", num_workers=0), progress=False)
    r = CliRunner().invoke(cli, ["sql", "a", "SELECT count(*) AS n FROM items", "--root", "r", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == [{"n": 200}]
    r = CliRunner().invoke(cli, ["sql", "a", "SELECT count(*) AS n FROM items", "--json"])  # no root: the folder here
    assert r.exit_code == 0 and json.loads(r.stdout) == [{"n": 100}]


@pytest.mark.parametrize("kw, named", [({"actors": 0}, "--actors must be a whole number of at least 1 (got 0)"),
                                       ({"cpus_per_actor": 0}, "--cpus-per-actor must be > 0 (got 0)"),
                                       ({"cpus_per_actor": float("nan")}, "--cpus-per-actor must be > 0 (got nan)"),
                                       ({"gpus_per_actor": -1}, "--gpus-per-actor must be ≥ 0 (got -1)"),
                                       ({"in_flight": 0}, "in_flight must be ≥ 1 (got 0)")])
def test_bad_ray_options_from_python_name_the_option_and_value(kw, named):
    """The CLI's ranges reject these first; the Python API gets the same rule with the value, from the one place
    that owns each field (EngineConfig, or the Ray scheduler's own RayOptions)."""
    from embedsearch.build.config import EngineConfig
    from embedsearch.build.engines.ray import RayOptions
    from embedsearch.core.errors import EmbedsearchError

    with pytest.raises(EmbedsearchError, match="^" + named.replace("(", r"\(").replace(")", r"\)") + "$"):
        RayOptions(**kw) if "in_flight" in kw else EngineConfig(kind="ray", **kw)


def test_openmp_waits_are_shortened_unless_the_user_set_them():
    env: dict[str, str] = {}
    short_openmp_waits(env)
    assert env == {"GOMP_SPINCOUNT": str(GOMP_SPINCOUNT)}
    env = {"GOMP_SPINCOUNT": "300000"}
    short_openmp_waits(env)
    assert env == {"GOMP_SPINCOUNT": "300000"}


@pytest.mark.parametrize("user", [None, "77"])
def test_the_cli_sets_the_spin_count_before_openmp_loads(user):
    """libgomp reads GOMP_SPINCOUNT once, when it loads: main() must set it while no OpenMP library is in the
    process, and the value must reach the environment the libraries read (docs/benchmarks/threads.md for why)."""
    code = ("import os, sys\n"
            "import embedsearch.cli as c\n"
            "maps = open('/proc/self/maps').read()\n"
            "assert 'libgomp' not in maps and 'libiomp' not in maps and 'torch' not in sys.modules, 'OpenMP loaded'\n"
            "c.cli = lambda **kw: print(os.environ.get('GOMP_SPINCOUNT'))\n"
            "c.main()\n"
            "import torch\n"
            "assert 'libgomp' in open('/proc/self/maps').read()\n")
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | ({"GOMP_SPINCOUNT": user} if user else {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (user or str(GOMP_SPINCOUNT))
