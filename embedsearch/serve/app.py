"""The HTTP API (`/v1/…`) and the web page of `embedsearch serve`, as a FastAPI app.

Every answer comes from one snapshot of one index (see `snapshots`), through the same functions as the CLI
(`query_vectors`, `iter_search`), so ids and scores equal `embedsearch search --json` for the same query. Every bad
request is a 4xx whose body is one JSON object: `{"error": "<one line>", "field": "<the field at fault>"}`.
"""


import hmac
import io
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from typing import Annotated
from urllib.parse import parse_qsl, urlencode

import numpy as np

from embedsearch.core.errors import EmbedsearchError, IndexStateError, QueryError
from embedsearch.query.search import iter_search, query_vectors
from embedsearch.serve.snapshots import Registry, Snapshot

log = logging.getLogger("embedsearch.serve")

TOKEN_COOKIE = "embedsearch_token"
REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.html$")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. `k + offset` bounds the FAISS call; uploads are refused from their size and
    their header's pixel count before any pixel is decoded."""

    max_k: int = 1000
    max_window: int = 10_000  # k + offset
    max_queries: int = 64  # ids, vectors, texts or images in one request
    max_upload_bytes: int = 16 * 2**20  # the whole request body
    max_pixels: int = 40_000_000
    thumbnail_sizes: tuple[int, int] = (16, 512)


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def _error_body(status: int, field: str, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message.splitlines()[0][:500] if message else "error", "field": field},
                        status_code=status)


def _json(obj, status: int = 200):
    from fastapi.responses import Response

    return Response(json.dumps(obj, default=_plain, allow_nan=False), status_code=status,
                    media_type="application/json")


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return None
    return str(v)  # timestamps, decimals, UUIDs


# ----------------------------------------------------------------------------------------------- middleware


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413 before the app sees it: a declared length is checked at
    once; a body without one (chunked) is read up to the limit, then replayed to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error_body(413, "body", f"request body of {int(declared):,} bytes is over the limit of "
                                     f"{self.limit:,}")(scope, receive, send)
        if declared is not None:  # the server stops reading at the declared length
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await _error_body(413, "body", f"request body is over the limit of {self.limit:,} bytes")(
                    scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _redacted(query: str, drop: bool = False) -> str:
    """The query string for the log (the token shown as …) or for a redirect (`drop`: the token removed)."""
    pairs = [(k, "…" if k == "token" else v) for k, v in parse_qsl(query, keep_blank_values=True)
             if not (drop and k == "token")]
    return ("?" + urlencode(pairs)) if pairs else ""


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ----------------------------------------------------------------------------------------------- the app


def create_app(registry: Registry, *, token: str | None = None, cors: str | None = None, originals: bool = False,
               limits: Limits = Limits()):
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="embedsearch", version=version("embedsearch"), docs_url=None, redoc_url=None,
                  description="Search and browse embedsearch indexes. Errors: `{\"error\": …, \"field\": …}`.")

    # -- errors: one line of JSON naming the field ------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error_body(e.status, e.field, e.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form")]
        field = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            return _error_body(400, "body", f"malformed JSON: {err.get('msg', '')}")
        return _error_body(422, field, f"{field}: {err.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return _error_body(e.status_code, "path" if e.status_code == 404 else "request", str(e.detail))

    @app.exception_handler(EmbedsearchError)
    async def _state(request, e: EmbedsearchError):
        # a snapshot whose files a repair replaced under it: the next request reopens the index
        for served in registry.loaded():
            served.recheck()
        if isinstance(e, IndexStateError):
            return _error_body(503, "name", f"{e} (retry: the index is changing)")
        return _error_body(400, "request", str(e))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):  # the server stays up; the log keeps the traceback
        log.exception("unexpected error on %s", request.url.path)
        return _error_body(500, "server", f"internal error ({type(e).__name__}); see the server log")

    # -- token, request log, CORS ----------------------------------------------------------------------------

    @app.middleware("http")
    async def _log_and_auth(request: Request, call_next):
        t0 = time.perf_counter()
        if token is not None and request.url.path != "/v1/health":
            offered = request.headers.get("authorization", "")
            offered = offered[7:] if offered.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
            q = request.query_params.get("token")
            if request.url.path == "/" and q is not None and hmac.compare_digest(q, token):
                response = RedirectResponse("/" + _redacted(request.url.query, drop=True), status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            elif not hmac.compare_digest(offered, token):
                response = _error_body(401, "Authorization", "missing or wrong token: send `Authorization: Bearer "
                                       "TOKEN` (the page: open /?token=TOKEN once)")
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        ms = (time.perf_counter() - t0) * 1e3
        client = request.client.host if request.client else "-"
        print(f'{client} "{request.method} {request.url.path}{_redacted(request.url.query)}" '
              f"{response.status_code} {ms:.1f} ms", file=sys.stderr, flush=True)
        return response

    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)

    # -- helpers -----------------------------------------------------------------------------------------------

    def snapshot(name: str) -> "tuple[str, Snapshot]":
        served = registry.get(name)
        if served is None:
            raise ApiError(404, "name", f"no index named {name!r} is served here (GET /v1/indexes lists them)")
        return name, served.get()

    def check_window(k: int, offset: int) -> None:
        if k + offset > limits.max_window:
            raise ApiError(422, "offset", f"k + offset = {k + offset:,} is over the limit of {limits.max_window:,}")

    def check_count(n: int, field: str) -> None:
        if n > limits.max_queries:
            raise ApiError(422, field, f"{field}: {n} queries in one request, over the limit of {limits.max_queries}")

    def run_search(name: str, snap: Snapshot, *, k: int, offset: int, where: str | None, with_vector: bool,
                   field: str | None = None, **queries) -> dict:
        ix = snap.ix
        field = field or next((f for f, v in queries.items() if v is not None and len(v)), "query")
        with snap.lock:
            try:
                descs, q = query_vectors(ix, **queries)
            except QueryError as e:
                status = 404 if str(e).startswith("id ") and "has no embedding" in str(e) else 400
                raise ApiError(status, field, str(e)) from None
            try:
                rows = list(iter_search(ix, descs, q, k=k + offset + 1, where=where))
            except QueryError as e:
                raise ApiError(400, "where" if where else field, str(e)) from None
            groups: list[list[dict]] = [[] for _ in descs]
            j = 0
            for r in rows:  # rows come query by query, ranks restarting at 1 (a query may have no hit at all)
                while descs[j]["query"] != r["query"] or (r["rank"] == 1 and groups[j]):
                    j += 1
                groups[j].append(r)
            results = [{"query": d["query"], "hits": g[offset:offset + k], "has_more": len(g) > offset + k}
                       for d, g in zip(descs, groups, strict=True)]
            ids = np.unique([h["id"] for r in results for h in r["hits"]]).astype(np.int64)
            meta = ix.items_by_id(ids) if len(ids) else {}
            vecs = dict(zip(ids.tolist(), ix.vectors(ids), strict=True)) if with_vector and len(ids) else {}
        for r in results:
            for h in r["hits"]:
                h.pop("query", None)
                h.update({c: _finite(v) for c, v in meta.get(h["id"], {}).items() if c not in h})
                if with_vector:
                    h["vector"] = vecs[h["id"]].tolist()
        return {"index": name, "snapshot": snap.key, "k": k, "offset": offset, "where": where, "results": results}

    def parse_vectors(vectors: list[list[float]], dim: int) -> np.ndarray:
        for i, v in enumerate(vectors):
            if len(v) != dim:
                raise ApiError(422, "vectors", f"vectors[{i}] has {len(v)} values; this index holds {dim}-d vectors")
        a = np.asarray(vectors, np.float64).reshape(len(vectors), dim)
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            raise ApiError(422, "vectors", f"vectors[{int(np.flatnonzero(bad)[0])}] contains NaN or Inf")
        if (np.abs(a) > np.finfo(np.float32).max).any():
            raise ApiError(422, "vectors", "vectors: a value is beyond float32's range")
        zero = ~np.any(a, axis=1)
        if zero.any():
            raise ApiError(422, "vectors", f"vectors[{int(np.flatnonzero(zero)[0])}] is all zeros: it has no "
                           "direction")
        return a.astype(np.float32)

    def item_or_404(snap: Snapshot, item_id: int) -> dict:
        with snap.lock:
            row = snap.ix.items_by_id([item_id]).get(item_id)
        if row is None:
            raise ApiError(404, "id", f"no item {item_id} in index {snap.ix.name}")
        return row

    K = Query(10, ge=1, le=limits.max_k, description="hits per query")
    OFFSET = Query(0, ge=0, le=limits.max_window, description="skip this many hits (paging)")

    # -- API ---------------------------------------------------------------------------------------------------

    @app.get("/v1/health")
    def health():
        """Liveness; needs no token."""
        return {"ok": True, "version": version("embedsearch")}

    @app.get("/v1/indexes")
    def list_indexes():
        """The indexes served here, with their backbone, size and current snapshot."""
        out = []
        for name in registry.names():
            served = registry.get(name)
            if served is None:
                out.append({"name": name, "error": "cannot be opened"})
                continue
            snap = served.get()
            m = snap.ix.manifest
            out.append({"name": name, "snapshot": snap.key, "backbone": m.space.spec, "dim": m.space.dim,
                        "items": m.faiss.ntotal if m.faiss else 0, "counts": m.counts})
        return {"indexes": out}

    @app.get("/v1/indexes/{name}")
    def describe(name: str):
        """One index: manifest info, catalog columns, classes, splits, reports, whether text queries work."""
        name, snap = snapshot(name)
        ix = snap.ix
        with snap.lock:
            columns = [r[0] for r in ix.con.execute("DESCRIBE items").fetchall()]
            classes = ix.classes()
            splits = [r[0] for r in ix.con.execute(
                "SELECT DISTINCT split FROM items WHERE split IS NOT NULL ORDER BY 1").fetchall()]
        info = ix.info()
        info.pop("path", None)  # the server's file layout is not the client's business
        return _json({**info, "snapshot": snap.key, "columns": columns, "classes": classes, "splits": splits,
                      "text": ix.manifest.space.kind in ("open_clip", "hf"), "reports": _reports(snap),
                      "originals": originals})

    class SearchBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[int] = Field(default_factory=list, description="query by item id (the item is not returned)")
        vectors: list[list[float]] = Field(default_factory=list, description="query vectors in the index's space")
        texts: list[str] = Field(default_factory=list, description="text queries (CLIP-style indexes)")
        k: int = Field(10, ge=1, le=limits.max_k)
        offset: int = Field(0, ge=0, le=limits.max_window)
        where: str | None = Field(None, description="SQL predicate over the catalog columns, as in the CLI")
        with_vector: bool = False

    @app.post("/v1/indexes/{name}/search")
    def search_json(name: str, body: SearchBody):
        """Search by ids, vectors or texts (JSON body)."""
        name, snap = snapshot(name)
        check_window(body.k, body.offset)
        for f in ("ids", "vectors", "texts"):
            check_count(len(getattr(body, f)), f)
        if not (body.ids or body.vectors or body.texts):
            raise ApiError(422, "body", "give ids, vectors or texts (images: POST …/search/image)")
        vectors = parse_vectors(body.vectors, snap.ix.dim) if body.vectors else None
        return _json(run_search(name, snap, k=body.k, offset=body.offset, where=body.where,
                                with_vector=body.with_vector, ids=body.ids, texts=body.texts, vectors=vectors))

    @app.get("/v1/indexes/{name}/search")
    def search_get(name: str, id: Annotated[list[int] | None, Query(description="item id(s)")] = None,  # noqa: A002
                   text: Annotated[list[str] | None, Query(description="text query(ies)")] = None, k: int = K,
                   offset: int = OFFSET, where: str | None = None, with_vector: bool = False):
        """Search by id(s) or text(s) (query string: shareable URLs)."""
        id, text = id or [], text or []  # noqa: A001
        name, snap = snapshot(name)
        check_window(k, offset)
        check_count(len(id), "id")
        check_count(len(text), "text")
        if not (id or text):
            raise ApiError(422, "id", "give id=… or text=… (vectors: POST JSON; images: POST …/search/image)")
        return _json(run_search(name, snap, k=k, offset=offset, where=where, with_vector=with_vector,
                                field="id" if id else "text", ids=id, texts=text))

    @app.post("/v1/indexes/{name}/search/image")
    async def search_image(name: str, image: Annotated[list[UploadFile], File(description="PNG, JPEG, WebP, …")],
                           k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
                           offset: Annotated[int, Form(ge=0)] = 0, where: Annotated[str | None, Form()] = None,
                           with_vector: Annotated[bool, Form()] = False):
        """Search by uploaded image(s), embedded with the index's own backbone and preprocessing."""
        from fastapi.concurrency import run_in_threadpool

        from embedsearch.sources.images import ImageLoadError, decode_image

        name, snap = snapshot(name)
        check_window(k, offset)
        check_count(len(image), "image")
        decoded = []
        for i, up in enumerate(image):
            data = await up.read()
            label = f"image[{i}] {up.filename or ''}".strip()
            if not data:
                raise ApiError(400, "image", f"{label} is empty")
            try:
                img = await run_in_threadpool(decode_image, io.BytesIO(data), label, limits.max_pixels)
            except ImageLoadError as e:
                status = 413 if e.kind in ("TooManyPixels", "DecompressionBomb") else 400
                raise ApiError(status, "image", str(e)) from None
            decoded.append((f"upload:{up.filename or i}", img))
        return _json(await run_in_threadpool(lambda: run_search(name, snap, k=k, offset=offset, where=where,
                                                                with_vector=with_vector, decoded=decoded)))

    @app.get("/v1/indexes/{name}/items")
    def list_items(name: str, where: str | None = None, limit: int = Query(24, ge=1, le=limits.max_k),
                   offset: int = Query(0, ge=0)):
        """Items in id order, optionally filtered by `where` (browsing)."""
        name, snap = snapshot(name)
        with snap.lock:
            try:
                sel = snap.ix.select(where, limit=limit + 1, offset=offset)
            except QueryError as e:
                raise ApiError(400, "where", str(e)) from None
        items = [{"id": int(i), "label": lab, "split": sp, "path": p}
                 for i, lab, sp, p in zip(sel["id"][:limit], sel["label"], sel["split"], sel["path"], strict=False)]
        return _json({"index": name, "snapshot": snap.key, "offset": offset, "items": items,
                      "has_more": len(sel["id"]) > limit})

    @app.get("/v1/indexes/{name}/items/{item_id}")
    def item(name: str, item_id: int, with_vector: bool = False):
        """One item's catalog row (and its stored vector with `with_vector`)."""
        name, snap = snapshot(name)
        row = item_or_404(snap, item_id)
        out = {"index": name, "snapshot": snap.key, "item": {c: _finite(v) for c, v in row.items()}}
        if with_vector:
            try:
                out["vector"] = snap.ix.vectors(np.asarray([item_id]))[0].tolist()
            except QueryError as e:
                raise ApiError(404, "id", str(e)) from None
        return _json(out)

    @app.get("/v1/indexes/{name}/items/{item_id}/thumbnail")
    def item_thumbnail(name: str, item_id: int, size: int = Query(112, ge=limits.thumbnail_sizes[0],
                                                                  le=limits.thumbnail_sizes[1])):
        """The item's image as a PNG thumbnail, read through the dataset root and format allowlist."""
        from embedsearch.report.html import to_png

        name, snap = snapshot(name)
        row = item_or_404(snap, item_id)
        img = snap.thumbs.image(item_id, row.get("path"))
        if img is None:
            raise ApiError(404, "id", f"item {item_id} has no readable image (moved, deleted or not an image)")
        return Response(to_png(img, size), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/indexes/{name}/items/{item_id}/image")
    def item_image(name: str, item_id: int):
        """The item's full image as PNG (only with `--originals`)."""
        name, snap = snapshot(name)
        if not originals:
            raise ApiError(403, "id", "original images are not served: start the server with --originals")
        row = item_or_404(snap, item_id)
        img = snap.thumbs.image(item_id, row.get("path"))  # the same root and format checks as indexing
        if img is None:
            raise ApiError(404, "id", f"item {item_id} has no readable image")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/v1/indexes/{name}/results")
    def results(name: str, method: str | None = None):
        """Stored evaluation results (`method=` filters)."""
        name, snap = snapshot(name)
        sql = ("SELECT r.run_id, r.method, r.created, r.result FROM results r "
               + ("WHERE r.method = ? " if method else "") + "ORDER BY r.created, r.run_id")
        with snap.lock:
            rows = snap.ix.con.execute(sql, [method] if method else []).fetchall()
        return _json({"index": name, "snapshot": snap.key,
                      "results": [{"run_id": r, "method": m, "created": c, "result": json.loads(j)}
                                  for r, m, c, j in rows]})

    @app.get("/v1/indexes/{name}/reports/{file}")
    def report(name: str, file: str):
        """One HTML report of the index, by a name its reports folder lists."""
        name, snap = snapshot(name)
        if not REPORT_NAME.match(file) or file not in _reports(snap):
            raise ApiError(404, "file", f"no report {file!r} in index {name} (GET /v1/indexes/{name} lists them)")
        p = snap.ix.layout.reports / file
        if p.is_symlink() or not p.is_file():
            raise ApiError(404, "file", f"no report {file!r} in index {name}")
        return HTMLResponse(p.read_text(errors="replace"))

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(_docs_page(app.openapi()))

    # -- the page ------------------------------------------------------------------------------------------------

    static = resources.files("embedsearch.serve") / "static"
    assets = {f: (static / f).read_bytes() for f in ("index.html", "app.js", "style.css")}
    kinds = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css"}

    @app.get("/", include_in_schema=False)
    def page():
        return Response(assets["index.html"], media_type=kinds["html"])

    @app.get("/static/{file}", include_in_schema=False)
    def asset(file: str):
        if file not in assets or file == "index.html":
            raise ApiError(404, "file", f"no static file {file!r}")
        return Response(assets[file], media_type=kinds[file.rsplit(".", 1)[1]])

    return app


def _docs_page(spec: dict) -> str:
    """The OpenAPI description as one plain HTML page (FastAPI's own /docs loads Swagger UI from a CDN)."""
    from html import escape

    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {})
            if body:
                params += ("; " if params else "") + "body: " + ", ".join(body)
            what = (op.get("description") or op.get("summary", "")).splitlines()[0]
            rows.append(f"<tr><td><b>{method.upper()}</b></td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(what)}</td><td>{escape(params)}</td></tr>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(spec['info']['title'])} API</title>"
            "<link rel='stylesheet' href='/static/style.css'></head><body>"
            f"<h1>{escape(spec['info']['title'])} API {escape(spec['info']['version'])}</h1>"
            f"<p>{escape(spec['info'].get('description', ''))} The machine-readable description: "
            "<a href='/openapi.json'>/openapi.json</a>.</p><table><tr><th>method</th><th>path</th><th>what</th>"
            f"<th>parameters</th></tr>{''.join(rows)}</table></body></html>")


def _reports(snap: Snapshot) -> list[str]:
    d = snap.ix.layout.reports
    try:
        return sorted(f for f in (p.name for p in d.iterdir()) if REPORT_NAME.match(f))
    except OSError:
        return []


# ----------------------------------------------------------------------------------------------- running it


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(registry: Registry, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          cors: str | None = None, originals: bool = False, limits: Limits = Limits(), ready=None) -> None:
    """Bind, print the URL (port 0 picks a free one), and answer until SIGINT/SIGTERM."""
    import signal
    import socket

    import uvicorn

    if host not in LOOPBACK and not token:
        raise IndexStateError(f"--host {host} exposes the server beyond this machine: give --token TOKEN too "
                              "(every request but /v1/health must then carry it)")
    registry.check()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response goes out as it is written (headers, then body) instead of
    # waiting ~40 ms for the client's delayed ACK (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise IndexStateError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    # listen before the URL is printed: a client that connects as soon as it reads the line waits in the backlog
    # while uvicorn starts, instead of being refused (asyncio's create_server listens again, which is harmless)
    sock.listen(2048)
    bound = sock.getsockname()[1]
    app = create_app(registry, token=token, cors=cors, originals=originals, limits=limits)
    shown = f"[{host}]" if ":" in host else host
    print(f"embedsearch serve: http://{shown}:{bound}/ ({', '.join(registry.names())})", file=sys.stderr, flush=True)
    if ready:
        ready(bound)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    # uvicorn answers SIGINT/SIGTERM with a graceful shutdown, then re-raises the signal to the handler it found:
    # a handler that only records it makes the stop a clean exit 0 (open requests finished, nothing to lose)
    stops: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, _frame: stops.append(n))
    uvicorn.Server(config).run(sockets=[sock])
    how = f" on {signal.Signals(stops[0]).name}" if stops else ""
    print(f"embedsearch serve: stopped{how}", file=sys.stderr, flush=True)
