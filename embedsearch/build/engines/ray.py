"""`index --engine ray`: the same embedding, one part per Ray task, on actors that hold the backbone.

The driver (`build_index`) plans ids and parts exactly as for the local engine and stays the only writer: each part
an actor returns goes through the same `on_part` commit, so atomic writes, crash points, the writer lock and resume
are the local engine's. What this module adds is the scheduling:

- a private local cluster unless `--address` names one (never whichever cluster a machine happens to have recorded);
- the backbone put in the object store once; each actor loads it once and keeps it;
- a preflight on every actor before any part is embedded: the pinned precision, batch size and thread count, the
  driver's library versions, and a readable dataset root on that node (one line naming the node otherwise);
- at most `in_flight` parts queued per actor, so the object store holds a few parts, not the dataset;
- an actor that dies is replaced and its parts retried a bounded number of times, a retried part alone on its actor
  (so a part that kills its worker cannot take an innocent one with it); a part that keeps failing is named at the
  end, after every other part is committed, and the same command resumes it.

A part is embedded by the local engine's own `run_embedding` on the actor, and batches never cross a part boundary,
so a part's vectors do not depend on which engine or actor made them (given the same threads and batch size).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedsearch.build.config import EngineConfig, RunConfig
from embedsearch.build.engines.local import PartResult, Pins, Timings, run_embedding
from embedsearch.core.errors import EmbedsearchError
from embedsearch.core.versions import library_versions
from embedsearch.models.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """The scheduler's own knobs; where and on how many actors is the `EngineConfig` (checked there, once)."""

    retries: int = 2  # extra attempts for a part whose worker died
    in_flight: int = 2  # parts queued per actor

    def __post_init__(self):
        for name, value, ok, rule in (("retries", self.retries, self.retries >= 0, "≥ 0"),
                                      ("in_flight", self.in_flight, self.in_flight >= 1, "≥ 1")):
            if not ok:
                raise EmbedsearchError(f"{name} must be {rule} (got {value})")


class RayEngine:
    """Embed one part per task on Ray actors that hold the backbone; run `map`'s calls as Ray tasks. The driver
    stays the only writer: `commit` and `on_done` run here, in this process."""

    name = "ray"

    def __init__(self, cfg: EngineConfig, run: RunConfig, pins: Pins, *, progress: bool = True,
                 options: RayOptions | None = None):
        self.cfg, self.run, self.pins, self.progress = cfg, run, pins, progress
        self.options = options or RayOptions()

    def embed(self, backbone, parts: list[tuple[int, list]], root: Path | None,
              commit: Callable[[PartResult], None]) -> tuple[Timings, dict]:
        # the actors' torch threads are pinned too: a forward's float results depend on its thread count
        threads = self.run.threads or max(1, int(self.cfg.cpus_per_actor))
        p = self.pins
        pins = {"precision": p.precision or "fp32", "batch_size": p.batch_size, "threads": threads,
                "device": p.device, "num_workers": self.run.num_workers or 0, "channels_last": p.channels_last,
                "versions": library_versions()}
        timings, info = run_embedding_ray(backbone, parts, root, commit, engine=self.cfg, pins=pins,
                                          options=self.options, progress=self.progress)
        return timings, {"engine": "ray", "threads": threads, **info}

    def map(self, fn: Callable, calls: list[tuple], on_done: Callable[[int, object], None]) -> None:
        if not calls:
            return  # nothing to schedule: no cluster to start
        run_tasks_ray(fn, calls, address=self.cfg.address, on_done=on_done, retries=self.options.retries)


def connect(address: str | None) -> bool:
    """Connect to Ray (a private local cluster for None/"local"); returns whether this call started it."""
    try:
        import ray
    except ImportError:
        raise EmbedsearchError("--engine ray needs Ray: pip install 'embedsearch[ray]'") from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kw = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
    if address in (None, "local"):
        # Ray turns token authentication on for a new local cluster and says so on every run: keep it, quietly
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    elif "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get(
            "RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"  # a cluster started with `ray start` expects the token it wrote
    try:
        if address in (None, "local"):
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kw)
        else:
            kw.pop("include_dashboard")
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EmbedsearchError(f"cannot reach the Ray cluster at --address {address}: "
                               f"{str(e).splitlines()[0][:200]}") from None
    return True


def node_name() -> str:
    return f"{socket.gethostname()} ({_node_ip()})"


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 — only a label for messages
        return "?"


class Embedder:
    """A Ray actor: holds the backbone and embeds whole parts with the local runner."""

    def __init__(self, backbone, pins: dict, hooks: dict):
        """`hooks`: the driver's test hooks (`forwarded_test_hooks`), empty outside the tests."""
        import torch

        self.pins, self.hooks = pins, hooks
        torch.set_num_threads(pins["threads"])
        self.backbone = backbone
        if backbone.model is not None:
            backbone.model.to(pins["device"])

    def preflight(self) -> dict:
        """What differs on this node from what the driver pinned, one phrase each (empty: ready)."""
        import torch

        p, problems = self.pins, []
        have = library_versions(p["versions"])
        for lib, want in p["versions"].items():
            if have.get(lib) != want:
                problems.append(f"{lib} {have.get(lib) or 'missing'} (driver: {want})")
        if torch.get_num_threads() != p["threads"]:
            problems.append(f"{torch.get_num_threads()} torch threads (pinned: {p['threads']})")
        if p["precision"] == "auto":
            problems.append("precision auto (the driver must pin it)")
        try:
            resolve_device(p["device"])
        except EmbedsearchError as e:
            problems.append(str(e))
        root, sample = p.get("root"), p.get("sample")
        if root is not None:
            if not os.access(root, os.R_OK | os.X_OK) or not Path(root).is_dir():
                problems.append(f"the dataset root {root} is not readable")
            elif sample is not None:
                from embedsearch.sources.hf_dataset import row_split
                from embedsearch.sources.shards import member_split

                f = Path(root) / sample
                # a shard member or a dataset row: its file must be readable
                inside = None if f.exists() else (member_split(f) or row_split(f))
                f = inside[0] if inside else f
                if not os.access(f, os.R_OK):
                    problems.append(f"{f} is not readable")
        return {"node": node_name(), "problems": problems}

    def embed(self, part: int, records: list) -> tuple[PartResult, dict]:
        run_test_hooks(self.hooks, part)
        p, out = self.pins, []
        t = run_embedding(self.backbone, [(part, records)], Path(p["root"]) if p["root"] else None, out.append,
                          batch_size=p["batch_size"], num_workers=p["num_workers"], device=p["device"],
                          precision=p["precision"], channels_last=p["channels_last"], progress=False,
                          mp_context="forkserver")
        return out[0], {"read": t.read, "preprocess": t.preprocess, "forward": t.forward, "images": t.images}


def run_embedding_ray(backbone, parts: list[tuple[int, list]], root: Path | None,
                      on_part: Callable[[PartResult], None], *, engine: EngineConfig, pins: dict,
                      options: RayOptions | None = None, progress: bool = True) -> tuple[Timings, dict]:
    """Embed each (part number, records) pair on Ray actors and call `on_part` in the driver as each returns (in
    completion order). `engine`: the cluster address and the actors' count and resources. `pins`: precision,
    batch_size, threads, device, num_workers, channels_last, versions — the same values the local engine would use.
    Returns the timings and what ran where."""
    timings = Timings()
    if not parts:
        return timings, {}
    # Ray's driver threads print worker and raylet messages to stdout: send them to stderr, where progress goes,
    # so `--json` output stays one JSON document
    with contextlib.redirect_stdout(sys.stderr):
        return _run(backbone, parts, root, on_part, engine, options or RayOptions(), pins, progress, timings)


def _run(backbone, parts, root, on_part, engine: EngineConfig, options: RayOptions, pins: dict, progress: bool,
         timings: Timings):
    import ray
    from tqdm import tqdm

    t_start = time.perf_counter()
    started = connect(engine.address)
    try:
        first = next((r.path for _, recs in parts for r in recs if r.path), None)
        pins = {**pins, "root": str(root) if root else None, "sample": first}
        resources = ray.cluster_resources()
        if engine.gpus_per_actor > 0:
            fit = int(resources.get("GPU", 0) // engine.gpus_per_actor)
            if fit < 1:
                raise EmbedsearchError(f"--gpus-per-actor {engine.gpus_per_actor:g}: the Ray cluster has "
                                       f"{resources.get('GPU', 0):g} GPUs")
        else:
            fit = int(resources.get("CPU", 1) // engine.cpus_per_actor)
        n_actors = max(1, min(engine.actors or fit, len(parts)))
        remote = ray.remote(num_cpus=engine.cpus_per_actor, num_gpus=engine.gpus_per_actor, max_restarts=0,
                            max_task_retries=0)(Embedder)
        model_ref = ray.put(backbone)  # shipped once; every actor reads it from the object store
        hooks = forwarded_test_hooks()

        def start_actor():
            actor = remote.remote(model_ref, pins, hooks)
            try:
                report = ray.get(actor.preflight.remote())
            except ray.exceptions.RayError as e:
                raise EmbedsearchError(f"a Ray actor could not start: {_first_line(e)}") from None
            if report["problems"]:
                raise EmbedsearchError(f"Ray node {report['node']} cannot embed this index: "
                                       + "; ".join(report["problems"]))
            return actor, report["node"]

        slots = [start_actor() for _ in range(n_actors)]
        startup = time.perf_counter() - t_start  # connecting, shipping the backbone, starting and checking actors
        nodes = Counter(node for _, node in slots)
        queue = deque(parts)
        load = [0] * n_actors
        solo = [False] * n_actors  # a retried part runs alone on its actor
        generation = [0] * n_actors
        inflight: dict = {}
        attempts: Counter = Counter()
        failed: dict[int, str] = {}
        replaced = 0
        total = sum(len(r) for _, r in parts)
        bar = tqdm(total=total, unit="img", desc=f"embed (ray, {n_actors} actors)", disable=not progress,
                   smoothing=0.1)

        def submit():  # round robin, up to `in_flight` parts per actor
            for _ in range(options.in_flight):
                for s in range(n_actors):
                    if not queue or solo[s] or load[s] >= options.in_flight:
                        continue
                    part, recs = queue[0]
                    retry = attempts[part] > 0
                    if retry and load[s]:
                        continue  # a retried part waits for an idle actor
                    queue.popleft()
                    ref = slots[s][0].embed.remote(part, recs)
                    inflight[ref] = (s, generation[s], part, recs)
                    load[s] += 1
                    solo[s] = retry

        submit()
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            s, gen, part, recs = inflight.pop(ref)
            if gen == generation[s]:
                load[s] -= 1
                solo[s] = False
            try:
                res, t = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                reason = f"its worker died ({_first_line(e)})"
                if gen == generation[s]:  # replace the dead actor once, however many of its parts were lost
                    ray.kill(slots[s][0], no_restart=True)
                    generation[s] += 1
                    replaced += 1
                    load[s], solo[s] = 0, False
                    slots[s] = start_actor()
                _retry(part, recs, reason, attempts, options.retries, queue, failed)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if hasattr(e, "cause") else None
                if isinstance(cause, EmbedsearchError):
                    raise EmbedsearchError(str(cause)) from None
                _retry(part, recs, f"{type(cause).__name__ if cause else 'error'}: {_first_line(cause or e)}",
                       attempts, options.retries, queue, failed)
            else:
                t0 = time.perf_counter()
                on_part(res)
                timings.write += time.perf_counter() - t0
                timings.read += t["read"]
                timings.preprocess += t["preprocess"]
                timings.forward += t["forward"]
                timings.images += t["images"]
                bar.update(len(recs))
            submit()
        bar.close()
        timings.wall = time.perf_counter() - t_start
        info = {"actors": n_actors, "nodes": dict(nodes), "retried_parts": sum(1 for v in attempts.values() if v),
                "actors_replaced": replaced, "startup_s": round(startup, 3),
                "address": engine.address or "local"}
        if failed:
            part, why = min(failed.items())
            more = f" (and {len(failed) - 1} more parts)" if len(failed) > 1 else ""
            raise EmbedsearchError(f"part {part} failed on {options.retries + 1} attempts: {why}{more}; every other "
                                   f"part is committed; re-run the same command to retry")
        return timings, info
    finally:
        if started:
            ray.shutdown()


def _retry(part, recs, reason, attempts, retries, queue, failed) -> None:
    attempts[part] += 1
    if attempts[part] > retries:
        failed[part] = reason
        log.warning("part %d failed %d times (%s); giving up on it for this run", part, attempts[part], reason)
    else:
        log.warning("part %d: %s; retrying (%d of %d)", part, reason, attempts[part], retries)
        queue.appendleft((part, recs))


def _first_line(e) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def run_tasks_ray(fn: Callable, calls: list[tuple], *, address: str | None, on_done: Callable[[int, object], None],
                  cpus: float = 1.0, retries: int = 2) -> dict:
    """`fn(*args)` for each args tuple of `calls`, one Ray task each (at most one in flight per CPU of the cluster),
    `on_done(i, result)` in the driver as each finishes. A task whose worker dies is retried `retries` times by Ray;
    one that raises fails the run with its first line. The FAISS shard build uses this: `fn` reads and writes only
    paths under the index folder, which every node mounts at the same place."""
    import ray

    with contextlib.redirect_stdout(sys.stderr):
        started = connect(address)
        try:
            t0 = time.perf_counter()
            task = ray.remote(num_cpus=cpus, max_retries=retries)(fn)
            limit = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
            pending: dict = {}
            todo = list(enumerate(calls))
            while todo or pending:
                while todo and len(pending) < limit:
                    i, args = todo.pop(0)
                    pending[task.remote(*args)] = i
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as e:
                    why = _first_line(getattr(e, "cause", None) or e)
                    raise EmbedsearchError(f"Ray task {i} of {fn.__name__} failed: {why}") from None
                on_done(i, result)
            return {"engine": "ray", "tasks": len(calls), "wall_s": round(time.perf_counter() - t0, 3)}
        finally:
            if started:
                ray.shutdown()


# ------------------------------------------------------------------------------------------------ tests only
# Two environment variables let the Ray tests make a part slow or kill its worker. They are read here, in the
# driver, and forwarded to the actors (a worker of an existing cluster does not see the driver's environment); no
# other code reads them, and without them both functions do nothing.

TEST_HOOKS = ("EMBEDSEARCH_TEST_RAY_DELAY", "EMBEDSEARCH_TEST_RAY_DIE")


def forwarded_test_hooks() -> dict[str, str]:
    """The test hooks set in the driver's environment (empty outside the tests)."""
    return {k: os.environ[k] for k in TEST_HOOKS if k in os.environ}


def run_test_hooks(hooks: dict[str, str], part: int) -> None:
    """On the actor, before `part` is embedded: `EMBEDSEARCH_TEST_RAY_DELAY=PART:SECONDS` delays a part
    (out-of-order completion); `EMBEDSEARCH_TEST_RAY_DIE=PART` kills the worker on every attempt at it, `PART@FILE`
    on the first only."""
    delay = hooks.get("EMBEDSEARCH_TEST_RAY_DELAY")
    if delay and int(delay.split(":")[0]) == part:
        time.sleep(float(delay.split(":")[1]))
    die = hooks.get("EMBEDSEARCH_TEST_RAY_DIE")
    if die:
        which, _, marker = die.partition("@")
        if int(which) == part:
            if not marker:
                os._exit(1)
            try:
                Path(marker).touch(exist_ok=False)
            except FileExistsError:
                return
            os._exit(1)
