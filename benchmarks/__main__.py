"""The runner: `python -m benchmarks` lists the benchmarks; `python -m benchmarks NAME [--quick] [args…]` runs one.

    python -m benchmarks                          # the benchmarks, one line each
    python -m benchmarks eval --help              # a benchmark's options (and the runner's)
    python -m benchmarks eval --quick             # a smoke test: shrunken sizes, saved as …-quick.json
    python -m benchmarks eval --classes 10        # a measurement: benchmarks/results/eval/<machine>-<date>.json
    python -m benchmarks eval --render --doc      # no run: the newest saved result → docs/benchmarks/eval.md
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import shlex
import sys
from pathlib import Path

from benchmarks import _harness as H

HERE = Path(__file__).parent
RUNNER = ("quick", "doc", "out", "render")
RENAMED = {"index": "indexing"}  # scripts/bench_index.py


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def summary(name: str) -> str:
    """The first line of a benchmark's docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    first = first.split(". ")[0].removesuffix(".")
    return first if len(first) <= 100 else first[:99] + "…"


def listing() -> str:
    width = max(map(len, names()))
    lines = ["usage: python -m benchmarks NAME [--quick] [--doc] [--out DIR] [--render [FILE]] [options…]", "",
             "benchmarks (readings in docs/benchmarks/NAME.md, raw results in benchmarks/results/NAME/):"]
    lines += [f"  {n:<{width}}  {summary(n)}" for n in names()]
    return "\n".join(lines)


def parser(name: str, mod) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=mod.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    r = ap.add_argument_group("runner")
    quick = ", ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                      for k, v in getattr(mod, "QUICK", {}).items())
    about = ("not available for this one" if not hasattr(mod, "QUICK")
             else f"a smoke test: {quick or 'the full run, quick already'} (saved as …-quick.json)")
    r.add_argument("--quick", action="store_true", help=about)
    r.add_argument("--doc", action="store_true", help=f"also write the reading to docs/benchmarks/{name}.md")
    r.add_argument("--out", default=None, help="results folder instead of benchmarks/results (e.g. $OUT on a lent "
                                               "machine)")
    r.add_argument("--render", nargs="?", const="latest", default=None, metavar="FILE",
                   help="do not run: render a saved result (default: the newest full one)")
    mod.add_arguments(ap.add_argument_group(name))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "--list", "list"):
        print(listing())
        return 0
    name = Path(argv[0]).stem.removeprefix("bench_")  # the old scripts/bench_NAME.py names work too
    name = RENAMED.get(name, name)
    if name not in names():
        print(f"unknown benchmark {argv[0]!r}; one of: {', '.join(names())}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"benchmarks.{name}")
    ap = parser(name, mod)
    rest = argv[1:]
    if "--quick" in rest:
        if not hasattr(mod, "QUICK"):
            ap.error(f"{name} has no --quick sizes: pass smaller options instead (see --help)")
        ap.set_defaults(**mod.QUICK)
    ns = ap.parse_args(rest)
    opts = {k: getattr(ns, k) for k in RUNNER}
    args = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k not in RUNNER})
    stem = getattr(args, "stem", None) or name  # --stem (eval_cli) names the results folder and the reading
    if opts["doc"] and opts["quick"]:
        ap.error("--doc writes the committed reading: not from a --quick run")
    if opts["doc"] and not hasattr(mod, "render"):
        ap.error(f"{name} has no render: docs/benchmarks/{stem}.md is written by hand from its results")
    if opts["render"]:
        path = H.latest(stem, out=opts["out"], suffixes=(".json", ".csv")) if opts["render"] == "latest" \
            else Path(opts["render"])
        if path is None:
            ap.error(f"no saved result of {stem} under {opts['out'] or H.RESULTS}")
        result = H.load(path)
    else:
        command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in [name, *rest])
        H.CURRENT.update(name=stem, out=opts["out"], quick=opts["quick"], command=command)
        result = mod.run(args)
        path = H.save(stem, result, out=opts["out"], quick=opts["quick"], command=command)
        print(f"saved {path}", file=sys.stderr)
    text = mod.render(result) if hasattr(mod, "render") else None
    text_out = text if text is not None else json.dumps(result, indent=1, default=H.jsonable)
    print(text_out, end="" if text_out.endswith("\n") else "\n")
    if opts["doc"]:
        (H.DOCS / f"{stem}.md").write_text(text)
        print(f"wrote {H.DOCS / f'{stem}.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
