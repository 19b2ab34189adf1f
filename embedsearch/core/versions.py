"""Installed library versions, as an index records them and a Ray worker checks them."""

from __future__ import annotations

import platform

RECORDED = ("python", "embedsearch", "torch", "timm", "open_clip_torch", "faiss-cpu", "faiss-gpu", "duckdb", "pyarrow",
            "numpy", "pillow")


def library_versions(packages=RECORDED) -> dict:
    """{package: installed version} for `packages` ("python": the interpreter's); packages not installed are left
    out."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        if pkg == "python":
            out[pkg] = platform.python_version()
            continue
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
