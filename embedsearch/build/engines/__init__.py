"""Where the pipeline's work runs: one `Engine` protocol, three engines.

- `local` (local.py): this process, with decode workers beside it; also the runner a Ray actor uses on each part.
- `ray` (ray.py): one part per task on Ray actors that hold the backbone; `map` calls as Ray tasks.
- `external` (external.py): vectors computed elsewhere (`--vectors`), committed part by part; no model runs.

The pipeline (build/pipeline.py) plans the parts and stays the only writer whatever the engine: each finished part
goes to its `commit`, and each `map` result to its `on_done`, in the driver process. The engine is not part of the
embedding space, so an index resumes, grows or is repaired with any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from embedsearch.build.config import EngineConfig, RunConfig
from embedsearch.build.engines.external import ExternalEngine, load_external_vectors
from embedsearch.build.engines.local import LocalEngine, PartResult, Pins, Timings
from embedsearch.build.engines.ray import RayEngine
from embedsearch.models.runtime import resolve_device

__all__ = ["Engine", "PartResult", "Pins", "Timings", "devices", "engine_for", "load_external_vectors"]


class Engine(Protocol):
    name: str

    def embed(self, backbone, parts: list[tuple[int, list]], root: Path | None,
              commit: Callable[[PartResult], None]) -> tuple[Timings, dict]:
        """Embed each (part number, records) pair; `commit` each finished part (in this process, in any order).
        Returns the timings and what ran where (merged into the build summary)."""
        ...

    def map(self, fn: Callable, calls: list[tuple], on_done: Callable[[int, object], None]) -> None:
        """`fn(*args)` for each args tuple of `calls`; `on_done(i, result)` in this process as each finishes."""
        ...


def engine_for(cfg: EngineConfig, run: RunConfig, pins: Pins | None = None, *,
               vectors: dict[int, np.ndarray] | None = None, progress: bool = True) -> Engine:
    """The engine `cfg` names; `vectors` (imported, `load_external_vectors`): the external engine, whatever `cfg`
    says. `pins` (what every part is embedded with) may be left out by a caller that only `map`s."""
    if vectors is not None:
        return ExternalEngine(vectors)
    if cfg.kind == "ray":
        return RayEngine(cfg, run, pins or Pins(), progress=progress)
    return LocalEngine(run, pins or Pins(), progress=progress)


def devices(cfg: EngineConfig, device: str) -> tuple[str, str]:
    """(the device the model runs on, the device the driver creates the backbone on) for `--device device`. On Ray
    the actors run the model (on CUDA when they reserve GPUs): the driver keeps its copy on the CPU, to describe and
    ship it."""
    if cfg.kind == "ray":
        return ("cuda" if cfg.gpus_per_actor > 0 else "cpu"), "cpu"
    device = resolve_device(device)
    return device, device
