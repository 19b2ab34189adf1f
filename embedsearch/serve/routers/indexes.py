"""Routes about the indexes themselves: health, the list, one index's description, results and reports."""

import re
from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from embedsearch.evaluate.results import ResultStore
from embedsearch.serve.deps import RegistryDep, SettingsDep, images_refused, served
from embedsearch.serve.errors import ApiError, json_response
from embedsearch.serve.snapshots import ServedState

REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.html$")
# HTML an index ships: a sandbox without allow-same-origin gives it an opaque origin (it cannot read /v1/… nor the
# token cookie), and it may fetch, post or load nothing. Only the map page, whose plot is its inline script, runs
# scripts ('unsafe-eval': plotly's WebGL traces compile functions).
REPORT_CSP = ("sandbox{scripts}; default-src 'none'; style-src 'unsafe-inline'; img-src data:; {script_src}"
              "connect-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")

router = APIRouter()


@router.get("/v1/health")
def health():
    """Liveness; needs no token."""
    return {"ok": True, "version": version("embedsearch")}


@router.get("/v1/indexes")
def list_indexes(registry: RegistryDep):
    """The indexes served here, with their backbone, size and current snapshot."""
    out = []
    for name in registry.names():
        state = registry.get(name)
        if state is None:
            out.append({"name": name, "error": "cannot be opened"})
            continue
        snap = state.get()
        m = snap.ix.manifest
        out.append({"name": name, "snapshot": snap.key, "backbone": m.space.spec, "dim": m.space.dim,
                    "items": m.faiss.ntotal if m.faiss else 0, "counts": m.counts})
    return {"indexes": out}


@router.get("/v1/indexes/{name}")
def describe(name: str, registry: RegistryDep, settings: SettingsDep):
    """One index: manifest info, catalog columns, classes, splits, reports, whether text queries work."""
    snap = served(registry, name)
    ix = snap.ix
    columns, classes, splits = ix.columns(), ix.classes(), ix.splits()
    info = ix.info()
    info.pop("path", None)  # the server's file layout is not the client's business
    info["source"] = {k: v for k, v in (info.get("source") or {}).items() if k not in ("spec", "root", "options")}
    return json_response({**info, "snapshot": snap.key, "columns": columns, "classes": classes,
                          "splits": splits, "text": ix.manifest.space.kind in ("open_clip", "hf"),
                          "reports": _reports(snap),
                          "originals": settings.originals,
                          "images": {"served": snap.thumbs.refused is None, "why": images_refused(snap)}})


@router.get("/v1/indexes/{name}/results")
def results(name: str, registry: RegistryDep, method: str | None = None):
    """Stored evaluation results (`method=` filters)."""
    snap = served(registry, name)
    rows = ResultStore(snap.ix).rows(method)
    return json_response({"index": name, "snapshot": snap.key, "results": rows})


@router.get("/v1/indexes/{name}/reports/{file}")
def report(name: str, file: str, registry: RegistryDep):
    """One HTML report of the index, by a name its reports folder lists."""
    snap = served(registry, name)
    if not REPORT_NAME.match(file) or file not in _reports(snap):
        raise ApiError(404, "file", f"no report {file!r} in index {name} (GET /v1/indexes/{name} lists them)")
    p = snap.ix.layout.reports / file
    if p.is_symlink() or not p.is_file():
        raise ApiError(404, "file", f"no report {file!r} in index {name}")
    scripts = file.startswith("map-")  # the map page is its script; the other reports are static
    csp = REPORT_CSP.format(scripts=" allow-scripts" if scripts else "",
                            script_src="script-src 'unsafe-inline' 'unsafe-eval'; " if scripts else "")
    return HTMLResponse(p.read_text(errors="replace"), headers={"Content-Security-Policy": csp})


def _reports(snap: ServedState) -> list[str]:
    d = snap.ix.layout.reports
    try:
        return sorted(f for f in (p.name for p in d.iterdir()) if REPORT_NAME.match(f))
    except OSError:
        return []
