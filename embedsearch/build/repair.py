"""`embedsearch verify`: check every artifact of an index against the others; `--repair` rebuilds what is broken
from the Parquet parts (the source of truth) and re-embeds only the parts that are damaged or missing, through the
build pipeline (with the engine the person names, local by default)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from embedsearch.build.config import BuildConfig, EngineConfig
from embedsearch.build.pipeline import build_faiss, build_index
from embedsearch.core.errors import EmbedsearchError, IndexStateError, UntrustedError
from embedsearch.core.files import file_sha256
from embedsearch.core.schema import from_record
from embedsearch.models.code import CODE_KINDS, check_reattach
from embedsearch.models.config import BackboneConfig
from embedsearch.models.specs import parse_backbone
from embedsearch.sources.datasets import SourceOptions, open_source
from embedsearch.store import catalog as cat
from embedsearch.store import ondisk
from embedsearch.store import parts as store
from embedsearch.store.faiss_index import load_index
from embedsearch.store.manifest import (
    PART_FILE,
    Layout,
    Manifest,
    resolve,
    writer_lock,
)

log = logging.getLogger(__name__)


@dataclass
class Report:
    index: str
    problems: list[dict] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # sound data, but something the person must decide

    def add(self, what: str, file: str, detail: str) -> None:
        self.problems.append({"problem": what, "file": file, "detail": detail})

    @property
    def sound(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"index": self.index, "sound": self.sound, "problems": self.problems, "checked": self.checked,
                "repaired": self.repaired, "warnings": self.warnings}


def verify(name: str, root=None) -> Report:
    """Check the manifest, every part (size, sha256, Parquet page checksums, ids), the FAISS file and the catalog."""
    layout = resolve(name, root)
    rep = Report(str(layout.dir))
    try:
        layout.check_confined()
    except IndexStateError as e:
        rep.add("folder", layout.dir.name, str(e))
        return rep
    try:
        manifest = Manifest.load(layout)
    except IndexStateError as e:
        rep.add("manifest", layout.manifest.name, str(e))
        return rep
    if manifest.state != "complete":
        rep.add("incomplete", layout.manifest.name, f"state {manifest.state!r}: a build, extension or repair did not "
                "finish (readers serve the last complete snapshot if there is one)")
    part_ids: dict[str, np.ndarray] = {}
    listed = {p.file: p for p in manifest.parts}
    for fname, rec in listed.items():
        f = layout.parts / fname
        if not f.exists():
            rep.add("part missing", fname, "listed in the manifest, not on disk")
            continue
        if f.stat().st_size != rec.bytes or file_sha256(f) != rec.sha256:
            rep.add("part changed", fname, f"sha256/size differ from the manifest ({f.stat().st_size} bytes)")
            continue
        try:
            ids, vecs = store.read_part(f)
        except IndexStateError as e:
            rep.add("part unreadable", fname, str(e))
            continue
        if len(ids) != rec.rows or not np.isfinite(vecs.astype(np.float32)).all():
            rep.add("part content", fname, "row count differs from the manifest or non-finite vectors")
            continue
        part_ids[fname] = ids
    for f in sorted(layout.parts.glob("part-*.parquet")):
        if f.name not in listed and PART_FILE.fullmatch(f.name):
            rep.add("part not in manifest", f.name, "an extra part file (not used by queries)")
    rep.checked["parts"] = f"{len(part_ids)} of {len(listed)} sound"
    all_ids = np.concatenate(list(part_ids.values())) if part_ids else np.zeros(0, np.int64)
    if len(np.unique(all_ids)) != len(all_ids):
        rep.add("duplicate ids", "parts/", f"{len(all_ids) - len(np.unique(all_ids))} ids appear in two parts")

    fa = manifest.faiss
    if not fa:
        rep.add("faiss", "index.faiss", "the manifest records no FAISS index (the build did not finish)")
    elif not layout.faiss.exists():
        rep.add("faiss missing", layout.faiss.name, "not on disk")
    elif layout.faiss.stat().st_size != fa.bytes or file_sha256(layout.faiss) != fa.sha256:
        rep.add("faiss changed", layout.faiss.name, "sha256/size differ from the manifest")
    elif fa.ntotal != manifest.rows:
        rep.add("faiss stale", layout.manifest.name, f"the manifest records {fa.ntotal} FAISS vectors and "
                f"{manifest.rows} part rows")
    elif fa.lists_file and not _lists_sound(layout, fa):
        lf = layout.dir / fa.lists_file
        rep.add("faiss lists changed" if lf.is_file() and not lf.is_symlink() else "faiss lists missing",
                fa.lists_file, "the inverted-lists file's sha256/size differ from the manifest, or it is not there")
    else:
        try:
            ix = load_index(layout.faiss, on_disk=fa.lists_file is not None, lists_file=fa.lists_file)
            if ix.ntotal != len(all_ids) and len(part_ids) == len(listed):
                rep.add("faiss stale", layout.faiss.name, f"{ix.ntotal} vectors, the parts hold {len(all_ids)}")
            else:
                rep.checked["faiss"] = f"{ix.ntotal} vectors"
        except IndexStateError as e:
            rep.add("faiss unreadable", layout.faiss.name, str(e))

    _check_code(layout, manifest, rep)
    try:
        if not layout.catalog.exists():
            rep.add("catalog missing", layout.catalog.name, "not on disk")
        else:
            with cat.Catalog(layout.catalog).read() as con:
                ok = dict(con.execute("SELECT id, part FROM items WHERE status = 'ok'").fetchall())
                version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            have = {int(i): store.part_number(f) for f, ids in part_ids.items() for i in ids}
            if version is None or not str(version[0]).isdigit() or int(version[0]) > cat.SCHEMA_VERSION:
                rep.add("catalog version", layout.catalog.name, f"schema version {version and version[0]!r}; this "
                        f"embedsearch reads up to v{cat.SCHEMA_VERSION}")
            elif part_ids and len(part_ids) == len(listed) and ok.keys() != have.keys():
                rep.add("catalog out of step", layout.catalog.name, f"{len(ok.keys() - have.keys())} items marked ok "
                        f"have no vector, {len(have.keys() - ok.keys())} vectors have no ok item")
            elif moved := sum(ok[i] != p for i, p in have.items() if i in ok):
                rep.add("catalog out of step", layout.catalog.name,
                        f"{moved} items name another part than the one that holds their vector")
            rep.checked["catalog"] = f"schema v{version[0] if version else '?'}, {len(ok)} items ok"
    except Exception as e:  # noqa: BLE001 — any failure to read it is the finding
        rep.add("catalog unreadable", layout.catalog.name, str(e).splitlines()[0][:200])
    return rep


def _check_code(layout: Layout, manifest: Manifest, rep: Report) -> None:
    """The code a `py:`/`hub:` backbone would run for a query image: an edited file is a problem (queries would land in
    another space); code this user has not chosen to run is a warning (queries by image refuse it until
    --trust-code)."""
    try:
        spec = BackboneConfig.of_manifest(manifest).spec
    except EmbedsearchError:
        spec = manifest.space.spec
    try:
        if parse_backbone(spec).kind not in CODE_KINDS:
            return
        check_reattach(spec, manifest.backbone, layout.dir.name)
        rep.checked["code"] = f"{spec}: hash as recorded, trusted on this machine"
    except UntrustedError as e:
        rep.warnings.append(str(e))
    except EmbedsearchError as e:
        rep.add("code changed" if "changed since" in str(e) else "code missing", spec, str(e))


def repair(name: str, root=None, progress: bool = True, engine: EngineConfig | None = None,
           threads: int | None = None, trust_code: bool = False) -> Report:
    """Fix what `verify` found: drop damaged parts and re-embed exactly those; rebuild the catalog from the source
    and the parts, and the FAISS index from the parts.

    Destructive steps come last: under the writer lock, repair verifies, decides everything it will do and checks it
    can (the build record parses, the source opens, the backbone config is whole) before it deletes anything. It only
    ever deletes part files that `verify` found in the index's own parts/ folder, by their validated names.
    `engine`, `threads`: how to re-embed (default: the local engine, whatever built the index)."""
    layout = resolve(name, root)
    if not layout.manifest.is_file():
        rep = verify(name, root)
        raise IndexStateError(f"cannot repair {layout.dir}: {rep.problems[0]['detail'] if rep.problems else 'no index'}")
    with writer_lock(layout):  # refuses a folder with links out of it (check_confined)
        before = verify(name, root)
        if before.sound:
            return before
        plan = _plan_repair(layout, before, trust_code)
        manifest, cfg = plan.manifest, plan.cfg
        for f in sorted(plan.bad_parts):
            (layout.parts / f).unlink(missing_ok=True)
            before.repaired.append(f"removed damaged {f} (re-embedded below)")
        for f in sorted(plan.extra_parts):
            (layout.parts / f).unlink(missing_ok=True)
            before.repaired.append(f"removed extra {f}")
        manifest.parts = tuple(p for p in manifest.parts if p.file not in plan.bad_parts)
        if plan.catalog_bad:
            _rebuild_catalog(layout, manifest, plan.source)
            before.repaired.append("rebuilt the catalog from the source and the parts")
        elif plan.bad_parts:
            _mark_pending(layout, plan.bad_parts)
        # the FAISS file may hold vectors of the dropped parts: readers refuse the index until the repair finishes
        manifest.faiss, manifest.state, manifest.snapshot = None, "repairing", None
        manifest.save(layout)
    if _pending(layout):
        summary = build_index(plan.source, replace(cfg, engine=engine or EngineConfig(), run=replace(cfg.run, threads=threads)), progress=progress,
                              only_indexed=True, reattach={"index": layout.dir.name, "recorded": manifest.backbone,
                                                           "trust_code": trust_code})
        before.repaired.append("re-embedded the items without a sound vector and rebuilt the FAISS index")
        if summary.get("not_indexed"):
            before.repaired.append(f"left {summary['not_indexed']} items the source gained since the build "
                                   f"unindexed (`embedsearch index ... --add` embeds them)")
    else:
        with writer_lock(layout):
            manifest.faiss = build_faiss(layout, manifest, cfg)
            manifest.state = "complete"
            manifest.save(layout)
            ondisk.finish(layout.dir, keep=manifest.faiss.lists_file)
        before.repaired.append("rebuilt the FAISS index from the parts")
    after = verify(name, root)
    after.repaired = before.repaired
    return after


@dataclass
class _RepairPlan:
    manifest: Manifest
    cfg: BuildConfig
    bad_parts: set[str]
    extra_parts: set[str]
    catalog_bad: bool
    source: object | None  # the source, opened, when items must be embedded or the catalog rebuilt


def _plan_repair(layout: Layout, rep: Report, trust_code: bool = False) -> _RepairPlan:
    """Everything repair will do, checked before it does any of it; a refusal changes nothing."""
    kinds = {p["problem"] for p in rep.problems}
    if kinds & {"code changed", "code missing"}:
        raise IndexStateError(f"cannot repair {layout.dir}: {next(p['detail'] for p in rep.problems if p['problem'].startswith('code'))} "
                              "(nothing was changed)")
    if "manifest" in kinds:
        raise IndexStateError(f"{layout.manifest} is unusable; the manifest defines the embedding space, so this "
                              "index cannot be repaired — rebuild it (nothing was changed)")
    if "catalog version" in kinds:
        raise IndexStateError(f"{layout.catalog} was written by a newer embedsearch: upgrade embedsearch to repair "
                              "it (nothing was changed)")
    manifest = Manifest.load(layout)
    listed = {p.file for p in manifest.parts}
    bad = {p["file"] for p in rep.problems if p["problem"].startswith("part") and p["problem"] != "part not in manifest"}
    extra = {p["file"] for p in rep.problems if p["problem"] == "part not in manifest"}
    assert bad <= listed and all(PART_FILE.fullmatch(f) for f in bad | extra)  # names verify took from parts/
    catalog_bad = any(p["problem"].startswith("catalog") for p in rep.problems)
    try:
        cfg = BuildConfig.from_dict(manifest.build, f"manifest {layout.manifest}: build", add=False,
                                    root=str(layout.dir.parent), name=layout.dir.name)
    except (EmbedsearchError, TypeError, ValueError) as e:
        raise IndexStateError(f"cannot repair {layout.dir}: {e} (nothing was changed)") from None
    source = None
    if bad or catalog_bad or "incomplete" in kinds:
        spec = manifest.source.get("spec")
        if not spec:
            raise IndexStateError(f"cannot repair {layout.dir}: the manifest records no source to re-embed from "
                                  "(nothing was changed)")
        if manifest.space.kind == "module":
            raise IndexStateError(f"cannot repair {layout.dir} here: it was built from a Python nn.Module, which "
                                  "only your code can pass again — rebuild the damaged index from Python with "
                                  "es.build_index(..., model=...) (nothing was changed)")
        try:
            if manifest.space.kind != "external":
                # the code gate before anything is deleted: refused code or an edited file changes nothing
                check_reattach(BackboneConfig.of_manifest(manifest).spec, manifest.backbone, layout.dir.name,
                               trust=trust_code)
            opts = from_record(SourceOptions, manifest.source.get("options") or {},
                               f"manifest {layout.manifest}: source.options")
            source = open_source(spec, **asdict(opts))
        except EmbedsearchError as e:
            raise IndexStateError(f"cannot repair {layout.dir}: {e} (nothing was changed)") from None
    return _RepairPlan(manifest, cfg, bad, extra, catalog_bad, source)


def _pending(layout: Layout) -> int:
    with cat.Catalog(layout.catalog).read() as con:
        return con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchone()[0]


def _mark_pending(layout: Layout, parts: set[str]) -> None:
    nums = [store.part_number(f) for f in parts]
    with cat.Catalog(layout.catalog).write() as con:
        con.execute("UPDATE items SET status = 'pending', stage = NULL, error_type = NULL, error = NULL "
                    "WHERE part IN (SELECT unnest(?))", [nums])


def _rebuild_catalog(layout: Layout, manifest: Manifest, src) -> None:
    """Items from the source, each assigned to the part that holds its vector; items in no part go to new parts,
    pending, so the repair embeds them (an item that fails again is recorded with its reason). Runs and results
    are not recoverable."""
    where: dict[int, int] = {}
    for p in manifest.parts:
        ids, _ = store.read_part(layout.parts / p.file, with_vectors=False)
        where.update({int(i): p.number for i in ids})
    for suffix in ("", ".wal"):
        layout.catalog.with_name(layout.catalog.name + suffix).unlink(missing_ok=True)
    c = cat.Catalog(layout.catalog)
    c.init()
    size = BuildConfig.from_dict(manifest.build, f"manifest {layout.manifest}: build").run.part_size
    first = max([p.number for p in manifest.parts] + [-1]) + 1
    missing = sorted(r.id for r in src.records if r.id not in where)
    new_part = {rid: first + i // size for i, rid in enumerate(missing)}
    c.add_items(src.records, [where.get(r.id, new_part.get(r.id)) for r in src.records], src.classes)
    c.update_items([{"id": r.id, "status": "ok", "stage": None, "error_type": None, "error": None, "width": None,
                     "height": None} for r in src.records if r.id in where])


def _lists_sound(layout: Layout, fa) -> bool:
    lf = layout.dir / fa.lists_file
    st = fa.extra["storage"]
    return (lf.is_file() and not lf.is_symlink() and lf.stat().st_size == st["lists_bytes"]
            and file_sha256(lf) == st.get("lists_sha256"))
