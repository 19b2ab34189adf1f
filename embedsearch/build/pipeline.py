"""The indexing pipeline: source → backbone → Parquet parts → catalog → FAISS → manifest, resumable part by part.
Where the embedding and the on-disk FAISS shard builds run is the engine's business (build/engines/)."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedsearch.build.config import BuildConfig
from embedsearch.build.engines import PartResult, Pins, devices, engine_for, load_external_vectors
from embedsearch.core.errors import IndexStateError, SourceError
from embedsearch.core.files import file_sha256
from embedsearch.core.progress import bar as progress_bar
from embedsearch.core.trust import trust_root
from embedsearch.core.versions import library_versions
from embedsearch.models.runtime import resolve_precision
from embedsearch.sources.datasets import Source
from embedsearch.store import catalog as cat
from embedsearch.store import faiss_index as vindex
from embedsearch.store import ondisk
from embedsearch.store import parts as store
from embedsearch.store.manifest import (
    FaissRecord,
    Layout,
    Manifest,
    PartRecord,
    Snapshot,
    Space,
    check_consistent,
    check_space,
    resolve,
    writer_lock,
)

log = logging.getLogger(__name__)
DRIFT_QUERIES = 200  # leave-one-out queries an on-disk index keeps to measure its recall drift

DEFAULT_BATCH_SIZE = 64


def build_index(source: Source, cfg: BuildConfig, *, progress: bool = True, only_indexed: bool = False,
                backbone=None, reattach: dict | None = None) -> dict:
    """Build (or resume, or extend with `add`) the index `cfg.name` from `source`; returns the run summary.
    `only_indexed` (repair): embed what the catalog already lists, leave items the source gained since unindexed.
    `backbone`: a ready one (`models.backbones.module_backbone`, cfg.backbone `module:NAME`) instead of creating it.
    `reattach` (repair): `BackboneConfig.create`'s index/recorded/trust_code: the backbone is the index's own, not
    one the person named, so it goes through the code gate (models/code.py)."""
    if not source.records:
        raise SourceError(f"source {source.spec} has no items: nothing to do")
    layout = resolve(cfg.name, Path(cfg.root) if cfg.root else None)
    started = time.time()
    with writer_lock(layout):
        layout.parts.mkdir(parents=True, exist_ok=True)
        layout.reports.mkdir(exist_ok=True)
        _remove_stray_temporaries(layout)

        # on Ray the actors run the model on `device`: the driver keeps its copy on the CPU, to describe and ship it
        device, model_device = devices(cfg.engine, cfg.backbone.device)
        if cfg.vectors:
            backbone, external = None, load_external_vectors(Path(cfg.vectors), source)
            desc = {"spec": "external", "kind": "external", "model": None, "file": cfg.vectors,
                    "weights_sha256": file_sha256(Path(cfg.vectors)), "preprocess": None, "pool": None,
                    "dim": int(next(iter(external.values())).shape[0])}
        else:
            if backbone is None:
                backbone = cfg.backbone.create(model_device, **(reattach or {}))
            else:  # passed from Python: the model and transform as given, on this run's device
                backbone.model.to(model_device)
                backbone.config = cfg.backbone
            external, desc = None, backbone.describe()
        manifest = Manifest.load(layout) if layout.manifest.exists() else None
        # the autocast precision changes the vectors (bf16 vs fp32: cosine ≈ 0.999 on real models), so it is part
        # of the space; `auto` continues an index at its recorded precision, whatever this machine would pick; a
        # backbone without a network (pixels, imported vectors) has none
        # the batch size too: batching changes a network's float results, so a resume or `--add` keeps the recorded one
        precision, batch_size, space_batch = None, cfg.run.batch_size or DEFAULT_BATCH_SIZE, None
        if backbone is not None and backbone.model is not None:
            recorded = manifest.space if manifest is not None else None
            if recorded and recorded.precision and cfg.backbone.precision == "auto":
                precision = recorded.precision
            elif cfg.backbone.precision == "auto" and device != model_device:
                raise SourceError("--engine ray --gpus-per-actor: pass --precision bf16|fp16|fp32 (this driver "
                                  "runs no model, so it cannot pick one for the workers' GPUs)")
            else:
                precision = resolve_precision(cfg.backbone.precision, device)
            batch_size = cfg.run.batch_size or (recorded and recorded.batch_size) or DEFAULT_BATCH_SIZE
            space_batch = batch_size
        space = Space.of(desc, cfg.dtype, precision, space_batch)
        bcfg = None if backbone is None else backbone.config.resolved(
            precision=precision or "fp32", weights_sha256=desc.get("weights_sha256"))

        if manifest is not None:
            check_space(layout, manifest, space)
            check_code(layout, manifest, desc)
        else:
            manifest = Manifest(name=layout.dir.name, space=space, backbone=desc,
                                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        # the backbone is recorded once, in the build record, as it ran (resolved precision, the weights hash);
        # `backbone_config` is what manifests before the grouped BuildConfig recorded it as
        built = cfg if bcfg is None else replace(cfg, backbone=bcfg)
        manifest.backbone_config = None
        manifest.source, manifest.build, manifest.versions = source.describe(), built.to_dict(), library_versions()
        manifest.catalog = {"file": layout.catalog.name, "schema_version": cat.SCHEMA_VERSION}

        if reattach is None and source.root:
            trust_root(source.root)  # the person indexed from here: thumbnails may be served from it
        catalog = cat.Catalog(layout.catalog)
        catalog.init()
        not_indexed = _plan_new_items(catalog, source, cfg, only_indexed)
        plan = catalog.plan()
        committed = _committed_parts(layout, manifest, catalog, plan)
        if manifest.state == "complete" and len(committed) < len(plan):
            # extending a complete index: readers keep serving this snapshot until the new one is published
            manifest.snapshot = Snapshot(manifest.parts, manifest.faiss, manifest.counts)
        manifest.parts = tuple(committed[p] for p in sorted(committed))
        manifest.state = "building"
        manifest.save(layout)

        by_id = {r.id: r for r in source.records}
        todo = [(p, [by_id[i] for i in ids if i in by_id]) for p, ids in sorted(plan.items()) if p not in committed]
        # an item to embed that the source no longer has (a file deleted since) fails with its reason
        catalog.update_items([{"id": i, "status": "failed", "stage": "load", "error_type": "NotInSource",
                               "error": "no longer in the source", "width": None, "height": None}
                              for p, ids in plan.items() if p not in committed for i in ids if i not in by_id])
        part_md = {"space": space.to_dict(), "index": layout.dir.name}
        failures: Counter = Counter()
        embedded_now = [0]  # items this run embedded

        def commit(res: PartResult) -> None:
            ok = store.finite_rows(res.vectors, cfg.dtype) if len(res.ids) else np.zeros(0, bool)
            bad = set(res.ids[~ok].tolist())
            for row in res.rows:
                if row["id"] in bad:
                    row.update(status="failed", stage="embed", error_type="NonFiniteEmbedding",
                               error=f"embedding is NaN/Inf/zero after casting to {cfg.dtype}")
                if row["status"] == "failed":
                    failures[(row["stage"], row["error_type"])] += 1
                else:
                    embedded_now[0] += 1
            # the catalog first, then the part: a crash in between leaves no part file, so the part is redone
            catalog.update_items(res.rows)
            info = store.write_part(layout.parts / store.part_name(res.part), res.ids[ok], res.vectors[ok],
                                    cfg.dtype, part_md)
            committed[res.part] = PartRecord(**info)
            manifest.parts = tuple(committed[p] for p in sorted(committed))
            manifest.save(layout)

        engine = engine_for(cfg.engine, cfg.run, Pins(device, precision, batch_size, cfg.backbone.channels_last),
                            vectors=external, progress=progress)
        timings, engine_info = engine.embed(backbone, todo, source.root, commit)

        counts = _counts(layout)
        if not counts["embedded"] and ("IVF" in cfg.faiss.factory.upper() or cfg.faiss.factory == "auto"):
            # an IVF index cannot be trained on nothing: say why nothing was embedded, not "needs training vectors"
            groups = failure_groups(layout)
            why = "; ".join(f"{g['count']} {g['reason']} (e.g. {g['examples'][0]})" for g in groups[:3])
            raise SourceError(f"nothing could be embedded into {layout.dir.name}: {why or 'no items'}; all of them: "
                              f"embedsearch sql {layout.dir.name} \"SELECT path, stage, error FROM items WHERE "
                              "status = 'failed'\"")
        t0 = time.perf_counter()
        if todo or _faiss_stale(layout, manifest):
            # the FAISS file is renamed into place right before the manifest that names it is published; a reader
            # that falls between the two re-reads the manifest (reader.Index.open)
            manifest.faiss = build_faiss(layout, manifest, cfg)
        t_faiss = time.perf_counter() - t0
        manifest.counts = counts
        manifest.state = "complete"
        manifest.snapshot = None
        # what the index is, for a repair that rebuilds it: the choice it keeps, not this run's defaults
        kept = BuildConfig.from_dict(manifest.build, f"manifest {layout.manifest}: build")
        manifest.build = replace(kept, faiss=replace(kept.faiss, factory=manifest.faiss.requested or kept.faiss.factory,
                                                     on_disk=manifest.faiss.lists_file is not None,
                                                     retrain=False)).to_dict()
        manifest.save(layout)
        ondisk.finish(layout.dir, keep=manifest.faiss.lists_file)
        summary = {
            "index": str(layout.dir), "run_id": uuid.uuid4().hex[:12], "backbone": desc["spec"], "dim": desc["dim"],
            "dtype": cfg.dtype, "parts_embedded": len(todo), "parts_total": len(manifest.parts),
            "items": counts["items"], "embedded": counts["embedded"], "failed": counts["failed"],
            "failures_this_run": {f"{s}/{k}": n for (s, k), n in failures.items()},
            # every failed item of the index by reason, with a few examples: what the user reads instead of a SQL
            # query over thousands of rows (`index` prints it, and exits 1 when nothing could be embedded)
            "embedded_this_run": embedded_now[0], "failures": failure_groups(layout),
            "device": device, "precision": precision, "batch_size": batch_size, **engine_info,
            "not_indexed": not_indexed,
            "timings_s": {**timings.to_dict(), "faiss": round(t_faiss, 4)},
        }
        catalog.add_run(summary["run_id"], "index", started, time.time(), "complete", cfg.to_dict(), summary)
        return summary


def check_code(layout: Layout, manifest: Manifest, desc: dict) -> None:
    """A resume, `--add` or repair runs the same code the index was built with: the weights hash cannot see an edited
    forward (a `py:` file, a hub repository), and its vectors would land, silently, in another space."""
    have, now = manifest.backbone.get("code_sha256"), desc.get("code_sha256")
    if have and now and have != now:
        raise IndexStateError(f"the code of {desc['spec']} changed since index {layout.dir.name} was built (sha256 "
                              f"{now[:12]}, recorded {have[:12]}): its vectors would land in another space; restore "
                              "the code or use a new --name")


def _remove_stray_temporaries(layout: Layout) -> None:
    # only the lock holder writes here, so any temporary file is a leftover of a killed run
    for d in (layout.dir, layout.parts):
        for f in d.glob(".*.tmp-*"):
            f.unlink(missing_ok=True)


def _plan_new_items(catalog: cat.Catalog, source: Source, cfg: BuildConfig, only_indexed: bool = False) -> int:
    """Add the source's items the catalog lacks; returns how many were left out (`only_indexed`)."""
    existing = catalog.item_ids()
    new = sorted((r for r in source.records if r.id not in existing), key=lambda r: r.id)
    if existing and new and only_indexed:
        log.warning("the source has %d items the index does not; repair leaves them out (`index --add` embeds them)",
                    len(new))
        return len(new)
    if existing and new and not cfg.add:
        ex = new[0].path or new[0].id
        raise IndexStateError(f"source has {len(new)} items that index {cfg.name} does not (e.g. {ex}); "
                              "pass --add to embed them, or use a new --name")
    gone = len(existing - {r.id for r in source.records})
    if gone:
        log.warning("%d indexed items are no longer in the source; they stay in the index", gone)
    if not new:
        return 0
    plan = catalog.plan() if existing else {}
    first = max(plan) + 1 if plan else 0
    parts = [first + i // cfg.run.part_size for i in range(len(new))]
    catalog.add_items(new, parts, source.classes)
    return 0


def _committed_parts(layout: Layout, manifest: Manifest, catalog: cat.Catalog,
                     plan: dict[int, list[int]]) -> dict[int, PartRecord]:
    """Parts already done: listed in the manifest with a matching file, or renamed into place by a run that was
    killed before it updated the manifest (then its ids must be exactly the plan's ok items)."""
    listed = {p.number: p for p in manifest.parts}
    done: dict[int, dict] = {}
    for part in plan:
        f = layout.parts / store.part_name(part)
        if not f.exists():
            continue
        rec = listed.get(part)
        if rec and rec.bytes == f.stat().st_size and rec.sha256 == file_sha256(f):
            done[part] = rec
            continue
        try:
            ids, _ = store.read_part(f, with_vectors=False)
        except IndexStateError:
            ids = None
        with catalog.read() as con:
            status = dict(con.execute("SELECT id, status FROM items WHERE part = ?", [part]).fetchall())
        ok_ids = sorted(i for i, s in status.items() if s == "ok")
        if ids is not None and "pending" not in status.values() and sorted(ids.tolist()) == ok_ids:
            done[part] = PartRecord(f.name, len(ids), f.stat().st_size, file_sha256(f))
        else:
            log.warning("part %s does not match its plan; it will be embedded again", f.name)
            f.unlink()
    return done


def build_faiss(layout: Layout, manifest: Manifest, cfg: BuildConfig) -> FaissRecord:
    """Build the FAISS file from the parts, streaming them (one part in memory at a time besides the index)."""
    paths = [layout.parts / p.file for p in manifest.parts]
    dim, n = manifest.space.dim, manifest.rows
    old = manifest.faiss.to_dict() if manifest.faiss else {}
    requested = old.get("requested") or old.get("factory") or cfg.faiss.factory  # an index keeps its choice (--add, repair)
    t0 = time.perf_counter()
    auto = None
    on_disk = (old.get("storage") or {}).get("kind") == "ondisk" if old else cfg.faiss.on_disk
    factory = old.get("factory") if requested == "auto" else requested
    if requested == "auto" and not old:
        from embedsearch.query.ann import candidates

        first = candidates(n, dim, cfg.faiss.max_memory, allow_on_disk=True)[0]
        on_disk, factory = on_disk or first.on_disk, first.factory
    if on_disk:
        return _build_ondisk(layout, manifest, cfg, old, requested, factory, t0)
    if requested == "auto":
        from embedsearch.query.ann import auto_index

        budget = cfg.faiss.max_memory if cfg.faiss.max_memory is not None else (old.get("auto") or {}).get("max_memory")
        target = (old.get("auto") or {}).get("target", {}) if old else {}
        index, auto = auto_index(lambda: store.iter_parts(paths), n, dim, max_memory=budget,
                                 target_recall=target.get("10-recall@10", cfg.faiss.target_recall),
                                 max_latency_ms=target.get("max_latency_ms", cfg.faiss.max_latency_ms), seed=cfg.seed)
        factory, params, sample_n = auto["chosen"], auto["params"], None
    else:
        from embedsearch.query.ann import build_trained

        factory, params = requested, {}
        index, sample_n = build_trained(lambda: store.iter_parts(paths), n, dim, factory, cfg.seed)
    written = vindex.save_index(index, layout.faiss)
    return FaissRecord.of({"file": layout.faiss.name, "requested": requested, "factory": factory, "params": params,
            "metric": "inner_product on L2-normalized vectors (cosine)", "ntotal": int(index.ntotal),
            "bytes": written["bytes"], "sha256": written["sha256"], "trained_on": sample_n,
            "seed": cfg.seed, "gpu": vindex.gpu_count() > 0, "build_s": round(time.perf_counter() - t0, 3),
            "auto": auto})


def _build_ondisk(layout: Layout, manifest: Manifest, cfg: BuildConfig, old: dict, requested: str, factory: str,
                  t0: float) -> FaissRecord:
    """An IVF index with its lists on disk (store/ondisk.py): train once (or keep the quantizer of the lists it
    extends), add the parts into shards of bounded size, merge them with those lists into the next lists file."""
    from embedsearch.query import ann

    dim, n = manifest.space.dim, manifest.rows
    paths = {p.number: layout.parts / p.file for p in manifest.parts}
    rows_of = {p.number: p.rows for p in manifest.parts}

    def chunks():  # every part, in part order: the order the lists hold them in
        return store.iter_parts([paths[k] for k in sorted(paths)])

    store_old = old.get("storage") or {}
    auto = None
    row_bytes = ondisk.code_bytes(factory, dim)
    budget = cfg.faiss.max_memory or store_old.get("max_memory")
    shard_bytes = max(budget // 4, ondisk.MIN_SHARD_BYTES) if budget else ondisk.DEFAULT_SHARD_BYTES
    # the lists file this build extends: its parts must all still be there, unchanged (else every part is re-added)
    base = None
    if store_old and not cfg.faiss.retrain:
        kept = {int(k): v for k, v in store_old.get("parts", {}).items()}
        now = {p.number: p.sha256 for p in manifest.parts}
        if all(now.get(k) == v for k, v in kept.items()) and (layout.dir / store_old["lists_file"]).is_file():
            base = store_old["lists_file"]
        else:
            kept = {}
    new_parts = [p for p in manifest.parts if base is None or p.number not in kept]
    version = max([ondisk.lists_version(store_old["lists_file"])] if store_old else [0]) + 1
    shards = ondisk.plan_shards([(p.number, p.rows) for p in new_parts], row_bytes, shard_bytes)
    keep_quantizer = bool(store_old) and not cfg.faiss.retrain
    plan = {"version": version, "factory": factory, "base": base, "keep_quantizer": keep_quantizer,
            "parts": {str(p.number): p.sha256 for p in manifest.parts}, "shards": shards, "seed": cfg.seed}
    wd = ondisk.start_work(layout.dir, plan)
    trained = wd / "trained.faiss"
    if keep_quantizer and not (wd / "base.faiss").exists():
        # a copy of the extended index's metadata: index.faiss itself is replaced before the manifest naming it
        from embedsearch.core.files import atomic_write_bytes

        atomic_write_bytes(wd / "base.faiss", layout.faiss.read_bytes())
    trained_info = store_old.get("trained") if keep_quantizer else None
    if not trained.exists():
        if keep_quantizer:
            ondisk.trained_copy(wd / "base.faiss", trained)
        else:
            index, _ = ann.trained_empty(chunks, n, dim, factory, cfg.seed)
            vindex.save_index(index, trained)
            del index
    if trained_info is None:
        trained_info = {"sample": min(n, vindex.train_sample_size(factory, n)), "seed": cfg.seed, "vectors": n}
    todo = [g for g in shards if not (wd / ondisk.shard_name(g)).exists()]  # a resume reuses finished shards
    calls = [(trained, [paths[k] for k in g], wd / ondisk.shard_name(g)) for g in todo]
    log.info("on-disk IVF: %d shards of ≤ %d MiB (%d to build), merging into %s", len(shards), shard_bytes >> 20,
             len(calls), ondisk.lists_name(version))
    # the engine `cfg` names, even for imported vectors: a shard build reads and writes only the index folder
    engine = engine_for(cfg.engine, cfg.run)
    shard_engine = engine.name if calls else "local"
    with progress_bar(sum(rows_of[k] for g in todo for k in g), "on-disk IVF: shards", unit="vec") as bar:
        engine.map(ondisk.build_shard, calls, lambda _i, r: bar.update(r["rows"]))
    sources = ([ondisk.ListsFileSource(wd / "base.faiss", layout.dir)] if base else []) + \
              [ondisk.ShardSource(wd / ondisk.shard_name(g)) for g in shards]
    lists = ondisk.lists_name(version)
    with progress_bar(n, f"on-disk IVF: merging into {lists}", unit="vec") as bar:
        written = ondisk.merge(trained, sources, layout.dir / lists, layout.faiss, progress=bar.update)
    params = old.get("params") or {}
    if requested == "auto" and not params:
        params, auto = ann.tune_on_disk(layout.faiss, chunks, n, dim, factory, target_recall=cfg.faiss.target_recall,
                                        seed=cfg.seed, max_memory=cfg.faiss.max_memory)
    elif requested == "auto":
        auto = old.get("auto")
    if "recall" not in trained_info:
        # the recall of the freshly trained quantizer, on queries kept by id: `index-quality` measures the same
        # queries again after `--add`s and reports the drift (lists grow unevenly as the data moves)
        idx = vindex.load_index(layout.faiss, params=params, on_disk=True)
        q_ids, q, gt = ann.leave_one_out(chunks, n, n_queries=DRIFT_QUERIES, seed=cfg.seed + 2)
        trained_info = {**trained_info, "params": params, "recall": ann.loo_recalls(idx, q_ids, q, gt),
                        "query_ids": q_ids.tolist()}
        del idx
    return FaissRecord.of({
        "file": layout.faiss.name, "requested": requested, "factory": factory, "params": params,
        "metric": "inner_product on L2-normalized vectors (cosine)", "ntotal": written["ntotal"],
        "bytes": written["bytes"], "sha256": written["sha256"], "trained_on": trained_info["sample"],
        "seed": cfg.seed, "gpu": False, "build_s": round(time.perf_counter() - t0, 3), "auto": auto,
        "storage": {"kind": "ondisk", "lists_file": lists, "lists_bytes": written["lists_bytes"],
                    "lists_sha256": written["lists_sha256"], "version": version, "max_memory": budget,
                    "shard_bytes": shard_bytes, "shards": len(shards), "shards_built": len(calls),
                    "shard_engine": shard_engine, "extended": base,
                    "parts": {str(p.number): p.sha256 for p in manifest.parts}, "trained": trained_info}})


def _faiss_stale(layout: Layout, manifest: Manifest) -> bool:
    """Whether the FAISS file must be (re)built: the readers' own consistency check fails (none recorded, missing, or
    not the one of these parts). A run killed during `--add` after its parts were committed (or after the new FAISS
    file was renamed into place) still names the snapshot's FAISS file; resuming it must build the index of all
    parts, not publish the old one."""
    try:
        check_consistent(layout, manifest)
    except IndexStateError:
        return True
    return False


FAILURE_EXAMPLES = 3


def failure_groups(layout: Layout, examples: int = FAILURE_EXAMPLES) -> list[dict]:
    """The index's failed items grouped by reason (stage and error type), largest group first: its count, the first
    `examples` paths (ids where items have no path) and the first one's message."""
    with cat.Catalog(layout.catalog).read() as con:
        rows = con.execute(
            "SELECT stage, error_type, count(*) AS n, "
            f"min(coalesce(path, CAST(id AS VARCHAR)), {int(examples)}), "
            "arg_min(error, coalesce(path, CAST(id AS VARCHAR))) "
            "FROM items WHERE status = 'failed' GROUP BY stage, error_type ORDER BY n DESC, stage, error_type"
        ).fetchall()
    return [{"reason": f"{stage}/{kind}", "stage": stage, "error_type": kind, "count": int(n),
             "examples": list(ex), "error": err} for stage, kind, n, ex, err in rows]


def _counts(layout: Layout) -> dict:
    with cat.Catalog(layout.catalog).read() as con:
        rows = dict(con.execute("SELECT status, count(*) FROM items GROUP BY status").fetchall())
        classes = con.execute("SELECT count(*) FROM classes").fetchone()[0]
    return {"items": sum(rows.values()), "embedded": rows.get("ok", 0), "failed": rows.get("failed", 0),
            "pending": rows.get("pending", 0), "classes": classes}
