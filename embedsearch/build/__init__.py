"""Building an index: the configuration (`config.py`, light: the CLI reads its defaults), the pipeline
(`pipeline.py`: source → backbone → Parquet parts → catalog → FAISS → manifest, resumable part by part), the engines
it runs its work on (`engines/`: local, ray, external) and the check and repair of a built index (`repair.py`).

`from embedsearch.build import build_index, BuildConfig` works as before; the pipeline (numpy, the store) is imported
only when one of its names is first used, so `embedsearch --help` stays fast.
"""

from __future__ import annotations

from embedsearch.build.config import BuildConfig, EngineConfig, FaissConfig, RunConfig

__all__ = ["BuildConfig", "EngineConfig", "FaissConfig", "RunConfig", "build_index"]


def __getattr__(name: str):
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)
    pipeline = importlib.import_module("embedsearch.build.pipeline")
    try:
        return getattr(pipeline, name)
    except AttributeError:
        raise AttributeError(f"module 'embedsearch.build' has no attribute {name!r}") from None
