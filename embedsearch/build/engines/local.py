"""The local engine: batched inference in this process, with parallel decode/preprocess workers, autocast and
per-stage timings. `run_embedding` is also what a Ray actor runs on each part (engines/ray.py), so a part's vectors
do not depend on the engine that made them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedsearch.build.config import RunConfig
from embedsearch.core.progress import check_interrupt
from embedsearch.models.runtime import autocast
from embedsearch.sources.images import ImageLoadError, array_to_image, load_image

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Seconds per stage. read/preprocess are summed over workers (CPU time); forward/write/wall are wall time."""

    read: float = 0.0
    preprocess: float = 0.0
    forward: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    images: int = 0

    def to_dict(self) -> dict:
        d = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        d["images_per_s"] = round(self.images / self.wall, 2) if self.wall > 0 else None
        return d


@dataclass
class PartResult:
    part: int
    ids: np.ndarray          # ids embedded successfully, in plan order
    vectors: np.ndarray      # (len(ids), d) float32
    rows: list[dict] = field(default_factory=list)  # one status row per planned item (ok or failed)


@dataclass(frozen=True)
class Pins:
    """What the driver decides once for every part, whichever engine embeds it: the vectors of a part must not
    depend on where it ran (a resume or `--add` may use the other engine). `precision` None: no network."""

    device: str = "cpu"
    precision: str | None = None
    batch_size: int = 64
    channels_last: bool = False


class LocalEngine:
    """Embed in this process (decode workers beside it); run `map`'s calls one after another, here."""

    name = "local"

    def __init__(self, run: RunConfig, pins: Pins, *, progress: bool = True):
        self.run, self.pins, self.progress = run, pins, progress

    def embed(self, backbone, parts: list[tuple[int, list]], root: Path | None,
              commit: Callable[[PartResult], None]) -> tuple[Timings, dict]:
        import torch

        if self.run.threads:
            torch.set_num_threads(self.run.threads)
        p = self.pins
        timings = run_embedding(backbone, parts, root, commit, batch_size=p.batch_size,
                                num_workers=self.run.num_workers, device=p.device, precision=p.precision,
                                channels_last=p.channels_last, progress=self.progress)
        return timings, {"engine": "local", "threads": torch.get_num_threads()}

    def map(self, fn: Callable, calls: list[tuple], on_done: Callable[[int, object], None]) -> None:
        for i, args in enumerate(calls):
            on_done(i, fn(*args))


class _Items:
    """A map-style dataset over records; a failing item yields its error instead of an image, never a neighbour."""

    def __init__(self, records, root: Path | None, preprocess: Callable):
        self.records, self.root, self.preprocess = records, root, preprocess

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        t0 = time.perf_counter()
        try:
            if r.array is not None:
                img = array_to_image(r.array)
            else:
                at = (r.meta["tar_offset"], r.meta["tar_size"]) if "tar_offset" in r.meta else None
                img = load_image(self.root / r.path if self.root else Path(r.path), self.root, at)
        except ImageLoadError as e:
            return i, None, (e.stage, e.kind, str(e)), None, (time.perf_counter() - t0, 0.0)
        t1 = time.perf_counter()
        try:
            x = self.preprocess(img)
        except Exception as e:  # noqa: BLE001 — a transform failure costs this image only
            return i, None, ("preprocess", type(e).__name__, f"{r.path}: {e}"), img.size, (t1 - t0, 0.0)
        return i, x, None, img.size, (t1 - t0, time.perf_counter() - t1)


def _collate(batch):
    return batch  # tensors are stacked in the main process, after dropping failed items


def _part_batches(part_sizes: list[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches that never cross a part boundary, so each part is complete when its last batch returns."""
    start = 0
    for n in part_sizes:
        for b in range(start, start + n, batch_size):
            yield list(range(b, min(b + batch_size, start + n)))
        start += n


def run_embedding(
    backbone,
    parts: list[tuple[int, list]],
    root: Path | None,
    on_part: Callable[[PartResult], None],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
    mp_context: str | None = None,
) -> Timings:
    """Embed the records of each (part number, records) pair in order; call `on_part` as each part completes.
    `mp_context`: the decode workers' start method (a Ray actor uses forkserver: forking its threads can deadlock)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    timings = Timings()
    records = [r for _, recs in parts for r in recs]
    if not records:
        return timings
    if num_workers is None:
        num_workers = default_workers()
    dataset = _Items(records, root, backbone.preprocess)
    loader = DataLoader(dataset, batch_sampler=list(_part_batches([len(r) for _, r in parts], batch_size)),
                        num_workers=num_workers, collate_fn=_collate, pin_memory=device.startswith("cuda"),
                        prefetch_factor=4 if num_workers else None, persistent_workers=False,
                        multiprocessing_context=mp_context if num_workers else None)
    model = backbone.model
    if channels_last and model is not None:
        model.to(memory_format=torch.channels_last)

    bounds = np.cumsum([len(r) for _, r in parts])
    part_idx, buf_ids, buf_vecs, buf_rows = 0, [], [], []
    t_start = time.perf_counter()
    bar = tqdm(total=len(records), unit="img", desc="embed", disable=not progress, file=None, smoothing=0.1)
    for batch in loader:
        check_interrupt()  # a Ctrl-C swallowed during the imports
        good = [b for b in batch if b[1] is not None]
        for *_, (t_read, t_pre) in batch:
            timings.read += t_read
            timings.preprocess += t_pre
        vecs = np.zeros((0, 0), np.float32)
        if good:
            t0 = time.perf_counter()
            x = torch.stack([b[1] for b in good]).to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(device, precision):
                out = backbone.embed(x)
            vecs = out.float().cpu().numpy()
            timings.forward += time.perf_counter() - t0
        gi = 0
        for i, _x, err, size, _ in batch:
            r = records[i]
            w, h = size if size else (None, None)
            if err is None:
                buf_ids.append(r.id)
                buf_vecs.append(vecs[gi])
                gi += 1
                buf_rows.append({"id": r.id, "status": "ok", "stage": None, "error_type": None, "error": None,
                                 "width": w, "height": h})
            else:
                stage, kind, msg = err
                buf_rows.append({"id": r.id, "status": "failed", "stage": stage, "error_type": kind,
                                 "error": msg[:500], "width": w, "height": h})
        bar.update(len(batch))
        timings.images += len(good)
        last = batch[-1][0]
        if last + 1 == bounds[part_idx]:
            d = backbone.dim
            t0 = time.perf_counter()
            on_part(PartResult(parts[part_idx][0], np.asarray(buf_ids, np.int64),
                               np.stack(buf_vecs) if buf_vecs else np.zeros((0, d), np.float32), buf_rows))
            timings.write += time.perf_counter() - t0
            part_idx, buf_ids, buf_vecs, buf_rows = part_idx + 1, [], [], []
    bar.close()
    timings.wall = time.perf_counter() - t_start
    return timings


def default_workers() -> int:
    """Decode workers: one fewer than the cores (the main process runs the model), at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
