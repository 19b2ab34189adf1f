"""`embedsearch verify`: check every artifact of an index against the others; `--repair` rebuilds what is broken
from the Parquet parts (the source of truth) and re-embeds only the parts that are damaged or missing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from embedsearch.core.errors import EmbedsearchError, IndexStateError
from embedsearch.core.files import file_sha256
from embedsearch.store import catalog as cat
from embedsearch.store import parts as store
from embedsearch.store.manifest import Layout, read_manifest, resolve, write_manifest, writer_lock

log = logging.getLogger(__name__)


@dataclass
class Report:
    index: str
    problems: list[dict] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)

    def add(self, what: str, file: str, detail: str) -> None:
        self.problems.append({"problem": what, "file": file, "detail": detail})

    @property
    def sound(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"index": self.index, "sound": self.sound, "problems": self.problems, "checked": self.checked,
                "repaired": self.repaired}


def verify(name: str, root=None) -> Report:
    """Check the manifest, every part (size, sha256, Parquet page checksums, ids), the FAISS file and the catalog."""
    layout = resolve(name, root)
    rep = Report(str(layout.dir))
    try:
        manifest = read_manifest(layout)
    except IndexStateError as e:
        rep.add("manifest", layout.manifest.name, str(e))
        return rep
    part_ids: dict[str, np.ndarray] = {}
    listed = {p["file"]: p for p in manifest.get("parts", [])}
    for fname, rec in listed.items():
        f = layout.parts / fname
        if not f.exists():
            rep.add("part missing", fname, "listed in the manifest, not on disk")
            continue
        if f.stat().st_size != rec["bytes"] or file_sha256(f) != rec["sha256"]:
            rep.add("part changed", fname, f"sha256/size differ from the manifest ({f.stat().st_size} bytes)")
            continue
        try:
            ids, vecs = store.read_part(f)
        except IndexStateError as e:
            rep.add("part unreadable", fname, str(e))
            continue
        if len(ids) != rec["rows"] or not np.isfinite(vecs.astype(np.float32)).all():
            rep.add("part content", fname, "row count differs from the manifest or non-finite vectors")
            continue
        part_ids[fname] = ids
    for f in sorted(layout.parts.glob("part-*.parquet")):
        if f.name not in listed:
            rep.add("part not in manifest", f.name, "an extra part file (not used by queries)")
    rep.checked["parts"] = f"{len(part_ids)} of {len(listed)} sound"
    all_ids = np.concatenate(list(part_ids.values())) if part_ids else np.zeros(0, np.int64)
    if len(np.unique(all_ids)) != len(all_ids):
        rep.add("duplicate ids", "parts/", f"{len(all_ids) - len(np.unique(all_ids))} ids appear in two parts")

    fa = manifest.get("faiss")
    if not fa:
        rep.add("faiss", "index.faiss", "the manifest records no FAISS index (the build did not finish)")
    elif not layout.faiss.exists():
        rep.add("faiss missing", layout.faiss.name, "not on disk")
    elif file_sha256(layout.faiss) != fa["sha256"]:
        rep.add("faiss changed", layout.faiss.name, "sha256 differs from the manifest")
    else:
        from embedsearch.store.faiss_index import load_index

        try:
            ix = load_index(layout.faiss)
            if ix.ntotal != len(all_ids) and len(part_ids) == len(listed):
                rep.add("faiss stale", layout.faiss.name, f"{ix.ntotal} vectors, the parts hold {len(all_ids)}")
            else:
                rep.checked["faiss"] = f"{ix.ntotal} vectors"
        except IndexStateError as e:
            rep.add("faiss unreadable", layout.faiss.name, str(e))

    try:
        if not layout.catalog.exists():
            rep.add("catalog missing", layout.catalog.name, "not on disk")
        else:
            with cat.Catalog(layout.catalog).read() as con:
                ok = {r[0] for r in con.execute("SELECT id FROM items WHERE status = 'ok'").fetchall()}
                version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            have = set(all_ids.tolist())
            if part_ids and len(part_ids) == len(listed) and ok != have:
                rep.add("catalog out of step", layout.catalog.name,
                        f"{len(ok - have)} items marked ok have no vector, {len(have - ok)} vectors have no ok item")
            rep.checked["catalog"] = f"schema v{version[0] if version else '?'}, {len(ok)} items ok"
    except Exception as e:  # noqa: BLE001 — any failure to read it is the finding
        rep.add("catalog unreadable", layout.catalog.name, str(e).splitlines()[0][:200])
    return rep


def repair(name: str, root=None, progress: bool = True) -> Report:
    """Fix what `verify` found: drop damaged parts and re-embed exactly those; rebuild the catalog from the source
    and the parts, and the FAISS index from the parts."""
    from embedsearch.build import BuildConfig, _build_faiss, build_index
    from embedsearch.sources.datasets import open_source

    layout = resolve(name, root)
    before = verify(name, root)
    if before.sound:
        return before
    kinds = {p["problem"] for p in before.problems}
    if "manifest" in kinds:
        raise IndexStateError(f"{layout.manifest} is unusable; the manifest defines the embedding space, so this "
                              "index cannot be repaired — rebuild it")
    manifest = read_manifest(layout)
    with writer_lock(layout):
        bad_parts = {p["file"] for p in before.problems if p["problem"].startswith("part") and
                     p["problem"] != "part not in manifest"}
        for f in bad_parts:
            (layout.parts / f).unlink(missing_ok=True)
            before.repaired.append(f"removed damaged {f} (re-embedded below)")
        for p in before.problems:
            if p["problem"] == "part not in manifest":
                (layout.parts / p["file"]).unlink(missing_ok=True)
                before.repaired.append(f"removed extra {p['file']}")
        manifest["parts"] = [p for p in manifest["parts"] if p["file"] not in bad_parts]
        catalog_bad = any(p["problem"].startswith("catalog") for p in before.problems)
        if catalog_bad:
            _rebuild_catalog(layout, manifest)
            before.repaired.append("rebuilt the catalog from the source and the parts")
        elif bad_parts:
            _mark_pending(layout, bad_parts)
        # the FAISS file may hold vectors of the dropped parts: readers refuse the index until the repair finishes
        manifest.update(faiss=None, state="repairing")
        manifest.pop("snapshot", None)
        write_manifest(layout, manifest)
    cfg = BuildConfig(**{**manifest["build"], "add": False, "root": str(layout.dir.parent), "name": layout.dir.name})
    if _pending(layout):
        opts = dict(manifest["source"].get("options") or {})
        build_index(open_source(manifest["source"]["spec"], **opts), cfg, progress=progress)
        before.repaired.append("re-embedded the items without a sound vector and rebuilt the FAISS index")
    else:
        with writer_lock(layout):
            manifest["faiss"] = _build_faiss(layout, manifest, cfg)
            manifest["state"] = "complete"
            write_manifest(layout, manifest)
        before.repaired.append("rebuilt the FAISS index from the parts")
    after = verify(name, root)
    after.repaired = before.repaired
    return after


def _pending(layout: Layout) -> int:
    with cat.Catalog(layout.catalog).read() as con:
        return con.execute("SELECT count(*) FROM items WHERE status = 'pending'").fetchone()[0]


def _mark_pending(layout: Layout, parts: set[str]) -> None:
    nums = [store.part_number(f) for f in parts]
    with cat.Catalog(layout.catalog).write() as con:
        con.execute("UPDATE items SET status = 'pending', stage = NULL, error_type = NULL, error = NULL "
                    "WHERE part IN (SELECT unnest(?))", [nums])


def _rebuild_catalog(layout: Layout, manifest: dict) -> None:
    """Items from the source, each assigned to the part that holds its vector; items in no part go to new parts,
    pending, so the repair embeds them (an item that fails again is recorded with its reason). Runs and results
    are not recoverable."""
    from embedsearch.sources.datasets import open_source

    opts = dict(manifest["source"].get("options") or {})
    try:
        src = open_source(manifest["source"]["spec"], **opts)
    except EmbedsearchError as e:
        raise IndexStateError(f"cannot rebuild the catalog: the source no longer opens ({e})") from None
    where: dict[int, int] = {}
    for p in manifest["parts"]:
        ids, _ = store.read_part(layout.parts / p["file"], with_vectors=False)
        where.update({int(i): store.part_number(p["file"]) for i in ids})
    for suffix in ("", ".wal"):
        layout.catalog.with_name(layout.catalog.name + suffix).unlink(missing_ok=True)
    c = cat.Catalog(layout.catalog)
    c.init()
    size = int(manifest["build"].get("part_size") or 2048)
    first = max([store.part_number(p["file"]) for p in manifest.get("parts", [])] + [-1]) + 1
    missing = sorted(r.id for r in src.records if r.id not in where)
    new_part = {rid: first + i // size for i, rid in enumerate(missing)}
    c.add_items(src.records, [where.get(r.id, new_part.get(r.id)) for r in src.records], src.classes)
    c.update_items([{"id": r.id, "status": "ok", "stage": None, "error_type": None, "error": None, "width": None,
                     "height": None} for r in src.records if r.id in where])
