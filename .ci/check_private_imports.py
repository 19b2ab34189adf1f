#!/usr/bin/env python3
"""No module imports another module's private name: a small AST scan of embedsearch/, and of benchmarks/ as a
client of it (run by .ci/run).

A name that starts with one underscore (`_score`, `_Open`, a module `_impl`) belongs to the module that defines it.
Another module may neither import it (`from embedsearch.store.parts import _x`, `from .parts import _x`,
`import embedsearch.x._impl`) nor reach it through a module it imported (`parts._x`, `embedsearch.store.parts._x`,
`getattr(parts, "_x")`). Dunder names (`__version__`) are public. When a name is needed across modules, make it
public where it is defined. The benchmarks measure the library through its public API only: they are scanned for
uses of the package's private names (their own shared `benchmarks/_harness.py` is theirs to use).

    python .ci/check_private_imports.py [PACKAGE_DIR [CLIENT_DIR...]]
    # default: embedsearch/ beside .ci/, with benchmarks/ as its client; exit 1 on a finding
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class Package:
    """The modules of one package directory, by dotted name."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, Path] = {}
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            self.files[".".join(parts)] = f

    def is_module(self, name: str) -> bool:
        return name in self.files


def resolve_from(current: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom names (relative imports resolved against `current`)."""
    if not node.level:
        return node.module
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else [])) or None


def dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ['a', 'b', 'c'] (None if the chain does not start at a plain name)."""
    out = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    out.append(node.id)
    return out[::-1]


def scan(pkg: Package, current: str, f: Path) -> list[str]:
    """One line per use of another module's private name in module `current` (file `f`)."""
    top = pkg.root.name
    is_pkg = f.name == "__init__.py"
    tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
    where = f.relative_to(pkg.root.parent) if f.is_relative_to(pkg.root.parent) else f
    found: list[tuple[int, str]] = []
    aliases: dict[str, str] = {}  # a local name bound (anywhere in the file) to one of the package's modules

    def report(node: ast.AST, what: str) -> None:
        found.append((node.lineno, f"{where}:{node.lineno}: {what}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if not (a.name == top or a.name.startswith(top + ".")):
                    continue
                bad = [p for p in a.name.split(".") if private(p)]
                if bad:
                    report(node, f"imports the private module {a.name}")
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            target = resolve_from(current, is_pkg, node)
            if target is None or not (target == top or target.startswith(top + ".")):
                continue
            if any(private(p) for p in target.split(".")):
                report(node, f"imports from the private module {target}")
                continue
            for a in node.names:
                if pkg.is_module(f"{target}.{a.name}"):
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
                if private(a.name) and target != current:
                    report(node, f"imports {target}'s private name {a.name}")

    def module_at(chain: list[str]) -> str | None:
        """The package module a name chain (`parts`, `embedsearch.store.parts`) stands for."""
        if chain[0] not in aliases:
            return None
        name = aliases[chain[0]]
        for part in chain[1:]:
            if not pkg.is_module(f"{name}.{part}"):
                return None
            name = f"{name}.{part}"
        return name if pkg.is_module(name) else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            chain = dotted(node.value)
            mod = module_at(chain) if chain else None
            if mod is not None and mod != current:
                report(node, f"uses {mod}'s private name {node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr",
                                                                                                 "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and private(node.args[1].value)):
            chain = dotted(node.args[0])
            mod = module_at(chain) if chain else None
            if mod is not None and mod != current:
                report(node, f"uses {mod}'s private name {node.args[1].value} ({node.func.id})")
    return [line for _, line in sorted(found)]


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent.parent
    root = Path(argv[0]) if argv else here / "embedsearch"
    clients = [Path(a) for a in argv[1:]] if argv else [here / "benchmarks"]
    pkg = Package(root.resolve())
    found = [line for name, f in pkg.files.items() for line in scan(pkg, name, f)]
    for c in clients:  # modules outside the package: every private name of the package is another module's
        for name, f in Package(c.resolve()).files.items():
            found += scan(pkg, name, f)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} uses of another module's private name: make the name public where it is defined",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
