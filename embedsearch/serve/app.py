"""The HTTP API (`/v1/…`) and the web page of `embedsearch serve`, as a FastAPI app.

Every answer comes from one snapshot of one index (see `snapshots`), through the same functions as the CLI
(`query_vectors`, `iter_search`), so ids and scores equal `embedsearch search --json` for the same query. Every bad
request is a 4xx whose body is one JSON object: `{"error": "<one line>", "field": "<the field at fault>"}`.

Who may ask what (`Guard`): a tokenless server listens on loopback only and answers only to a loopback Host (a page
on another site that rebinds its DNS name to 127.0.0.1 is refused); a request from a page on another origin is
refused (its Origin header names it); and whatever writes or costs — every POST — must be a request that no page on
another site can make without asking first: one with the `X-Embedsearch` header, a JSON body or the token. What the
server sends cannot run as code in the API's origin: every answer carries a strict content-security policy, and the
HTML an index ships (`reports/*.html`) is served in a sandbox, as if from another origin, with no network access.
"""


import hmac
import io
import json
import logging
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from typing import Annotated
from urllib.parse import parse_qsl, urlencode

import numpy as np

from embedsearch.core.errors import EmbedsearchError, IndexStateError, QueryError, UntrustedError
from embedsearch.query.search import iter_search, query_vectors
from embedsearch.serve.snapshots import Registry, Snapshot

log = logging.getLogger("embedsearch.serve")

TOKEN_COOKIE = "embedsearch_token"
REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.html$")
# The header that makes a POST a request no other site's page can send without a CORS preflight (which this server
# never grants unless --cors names that site): the page sends it with every call; a JSON body or the token also do.
CLIENT_HEADER = "X-Embedsearch"
INT64 = (-(2**63), 2**63 - 1)

# On every answer: the page and the API load nothing but their own files, connect nowhere else and are never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# HTML an index ships: a sandbox without allow-same-origin gives it an opaque origin (it cannot read /v1/… nor the
# token cookie), and it may fetch, post or load nothing. Only the map page, whose plot is its inline script, runs
# scripts ('unsafe-eval': plotly's WebGL traces compile functions).
REPORT_CSP = ("sandbox{scripts}; default-src 'none'; style-src 'unsafe-inline'; img-src data:; {script_src}"
              "connect-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = ((b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"))


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. `k + offset` bounds the FAISS call; uploads are refused from their size and
    their header's pixel count before any pixel is decoded."""

    max_k: int = 1000
    max_window: int = 10_000  # k + offset
    max_queries: int = 64  # ids, vectors, texts or images in one request
    max_upload_bytes: int = 16 * 2**20  # the whole request body
    max_pixels: int = 40_000_000  # one uploaded image
    max_request_pixels: int = 64_000_000  # all the images of one request (at least max_pixels)
    max_uploads_at_once: int = 2  # image searches decoding at the same time; more get 503 + Retry-After
    max_rows: int = 100_000  # queries × (k + offset): the hits one request makes the server rank
    max_response_bytes: int = 16 * 2**20  # queries × k × (16 B per catalog column + 4 B per vector value)
    thumbnail_sizes: tuple[int, int] = (16, 512)


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers


def _error_body(status: int, field: str, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message.splitlines()[0][:500] if message else "error", "field": field},
                        status_code=status, headers=headers)


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


class Guard:
    """The outermost layer: who may ask (Host, Origin, token, a non-simple request for every POST), the security
    headers on every answer, one log line per request, and a JSON 500 for whatever escapes the app.

    The 500 is answered here, not by an exception handler: Starlette's handler for `Exception` sends the response
    and then re-raises, and uvicorn, seeing an exception after a response, closes the connection — the client's
    next keep-alive request was reset. Here the exception ends with the answer and the connection stays usable."""

    def __init__(self, app, *, token: str | None, hosts: set[str] | None, origins: tuple[str, ...] = ()):
        self.app = app
        self.token = None if token is None else token.encode()
        self.hosts = None if hosts is None else {h.encode() for h in hosts}
        self.origins = {o.encode() for o in origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status: list[int] = []

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = list(message.get("headers") or [])
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]  # a report keeps its own CSP
                message = {**message, "headers": headers}
            await send(message)

        try:
            refusal = self.refusal(scope)
            await (refusal or self.app)(scope, receive, send_with_headers)
        except Exception as e:  # the server stays up; the log keeps the traceback
            log.exception("unexpected error on %s", scope.get("path"))
            if status:  # the answer is under way: only closing the connection tells the client it is cut short
                raise
            await _error_body(500, "server", f"internal error ({type(e).__name__}); see the server log")(
                scope, receive, send_with_headers)
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            client = scope["client"][0] if scope.get("client") else "-"
            query = _redacted(scope.get("query_string", b"").decode("latin-1"))
            print(f'{client} "{scope["method"]} {scope["path"]!s:.300}{query:.300}" '
                  f"{status[0] if status else '-'} {ms:.1f} ms", file=sys.stderr, flush=True)

    def refusal(self, scope):
        """The answer that refuses this request before the app sees it (or its body is read), or None."""
        from fastapi.responses import RedirectResponse

        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.lower(), v)
        host, origin = headers.get(b"host"), headers.get(b"origin")
        host = host.lower() if host is not None else None
        if self.hosts is not None and _host_name(host) not in self.hosts:
            # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 still sends its own Host.
            # Any port: an SSH tunnel or a forwarded port reaches this one under another number.
            return _error_body(421, "Host", f"Host {_shown(host)} is not this server's: it answers to "
                               f"{', '.join(sorted(h.decode() for h in self.hosts))} (any port)")
        if origin is not None and origin not in self.origins and not (
                host and origin in (b"http://" + host, b"https://" + host)):
            return _error_body(403, "Origin", f"a request from a page of {_shown(origin)} is refused: this server "
                               "answers its own page only (start it with --cors ORIGIN to allow one other)")
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS":  # a CORS preflight carries no credentials; the CORS layer answers it
            return None
        if self.token is not None and path != "/v1/health":
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                offered = auth[7:]
            else:
                from starlette.requests import cookie_parser

                cookie = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(TOKEN_COOKIE, "")
                offered = cookie.encode("latin-1", "replace")
            query = scope.get("query_string", b"").decode("latin-1")
            q = dict(parse_qsl(query, keep_blank_values=True)).get("token")
            # bytes, never str: hmac.compare_digest refuses a str with non-ASCII characters (a 500 for `Bearer é`)
            if path == "/" and q is not None and hmac.compare_digest(q.encode("utf-8", "replace"), self.token):
                response = RedirectResponse("/" + _redacted(query, drop=True), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token.decode(), httponly=True, samesite="strict")
                return response
            if not hmac.compare_digest(offered, self.token):
                return _error_body(401, "Authorization", "missing or wrong token: send `Authorization: Bearer "
                                   "TOKEN` (the page: open /?token=TOKEN once)")
        if method not in ("GET", "HEAD") and not (
                headers.get(CLIENT_HEADER.lower().encode()) or b"authorization" in headers
                or headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/json"):
            # a form post or a fetch with a "simple" body needs no preflight: any site's page could send it
            return _error_body(403, CLIENT_HEADER, f"a {method} must carry the header `{CLIENT_HEADER}: 1`, a JSON "
                               "body (Content-Type: application/json) or the token; a page of another site can "
                               "send none of them")
        return None


def _host_name(host: bytes | None) -> bytes | None:
    """`127.0.0.1:8000` → `127.0.0.1`, `[::1]:8000` → `[::1]`; None for a Host that is not name[:port]."""
    if not host:
        return None
    name, sep, port = host.rpartition(b":") if not host.endswith(b"]") else (host, b"", b"")
    if not sep:
        name = host
    elif not port.isdigit():
        return None
    return name


def _shown(value: bytes | None) -> str:
    return "(none)" if value is None else repr(value.decode("latin-1"))[:120]


def _redacted(query: str, drop: bool = False) -> str:
    """The query string for the log (the token shown as …) or for a redirect (`drop`: the token removed)."""
    pairs = [(k, "…" if k == "token" else v) for k, v in parse_qsl(query, keep_blank_values=True)
             if not (drop and k == "token")]
    return ("?" + urlencode(pairs)) if pairs else ""


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# ----------------------------------------------------------------------------------------------- the app


def create_app(registry: Registry, *, token: str | None = None, cors: str | None = None, originals: bool = False,
               limits: Limits = Limits(), hosts: set[str] | None = None):
    """The app. `hosts`: the host names the Host header may carry, with any port (a tokenless loopback server:
    its loopback names), None for any."""
    from fastapi import FastAPI, File, Form, Path, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="embedsearch", version=version("embedsearch"), docs_url=None, redoc_url=None,
                  description="Search and browse embedsearch indexes. Errors: `{\"error\": …, \"field\": …}`.")

    # -- errors: one line of JSON naming the field ------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error_body(e.status, e.field, e.message, e.headers)

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

    @app.exception_handler(UntrustedError)
    async def _untrusted(request, e: UntrustedError):  # e.g. an upload the index's unverified code would embed
        return _error_body(403, "name", str(e))

    # -- who may ask: Guard (Host, Origin, token, non-simple POSTs), then CORS outside it -------------------------

    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)
    app.add_middleware(Guard, token=token, hosts=hosts, origins=(cors,) if cors else ())
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", CLIENT_HEADER])

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

    def check_cost(snap: Snapshot, n: int, field: str, k: int, offset: int, with_vector: bool) -> None:
        """What the answer will cost, from the request alone, before any search: the hits ranked (k + offset + 1
        per query) and the bytes sent (k per query, each with its catalog row and, with_vector, its vector)."""
        rows = n * (k + offset + 1)
        if rows > limits.max_rows:
            raise ApiError(422, "offset" if offset else "k", f"{n} {field} × (k + offset + 1) = {rows:,} hits to "
                           f"rank, over the limit of {limits.max_rows:,} per request: ask for fewer queries or a "
                           "smaller k or offset")
        per_hit = 16 * snap.columns() + (4 * snap.ix.dim if with_vector else 0)
        size = n * k * per_hit
        if size > limits.max_response_bytes:
            how = f" with {snap.ix.dim}-d vectors" if with_vector else ""
            raise ApiError(422, "with_vector" if with_vector else "k", f"{n} {field} × k {k:,} hits{how} would "
                           f"make an answer of ~{size / 2**20:,.0f} MiB, over the limit of "
                           f"{limits.max_response_bytes / 2**20:,.0f} MiB: ask for fewer queries, a smaller k"
                           + (" or no with_vector" if with_vector else ""))

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

    def source_image(snap: Snapshot, item_id: int, row: dict):
        try:
            return snap.thumbs.image(item_id, row.get("path"), strict=True)
        except UntrustedError:  # the reason names folders of this machine: the server's log has it, not the client
            raise ApiError(403, "id", images_refused(snap) or f"item {item_id}: its path leaves the index's image "
                           "folder; it is not served") from None

    def images_refused(snap: Snapshot) -> str | None:
        if snap.thumbs.refused is None:
            return None
        return (f"the images of index {snap.ix.name} are not served: they are not in a folder this server may read "
                "(start it with --image-root DIR; its start-up message names DIR)")

    def item_or_404(snap: Snapshot, item_id: int) -> dict:
        with snap.lock:
            row = snap.ix.items_by_id([item_id]).get(item_id)
        if row is None:
            raise ApiError(404, "id", f"no item {item_id} in index {snap.ix.name}")
        return row

    K = Query(10, ge=1, le=limits.max_k, description="hits per query")
    OFFSET = Query(0, ge=0, le=limits.max_window, description="skip this many hits (paging)")
    # ids are int64: a larger number is a 422 naming the field, not an OverflowError deep in numpy (a 500)
    Int64 = Annotated[int, Field(ge=INT64[0], le=INT64[1])]
    ITEM_ID = Path(ge=INT64[0], le=INT64[1], description="item id (int64)")

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
        info["source"] = {k: v for k, v in (info.get("source") or {}).items() if k not in ("spec", "root", "options")}
        return _json({**info, "snapshot": snap.key, "columns": columns, "classes": classes, "splits": splits,
                      "text": ix.manifest.space.kind in ("open_clip", "hf"), "reports": _reports(snap),
                      "originals": originals,
                      "images": {"served": snap.thumbs.refused is None, "why": images_refused(snap)}})

    class SearchBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[Int64] = Field(default_factory=list, description="query by item id (the item is not returned)")
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
        field = next(f for f in ("ids", "vectors", "texts") if getattr(body, f))
        check_cost(snap, len(body.ids) + len(body.vectors) + len(body.texts), field, body.k, body.offset,
                   body.with_vector)
        vectors = parse_vectors(body.vectors, snap.ix.dim) if body.vectors else None
        return _json(run_search(name, snap, k=body.k, offset=body.offset, where=body.where,
                                with_vector=body.with_vector, ids=body.ids, texts=body.texts, vectors=vectors))

    @app.get("/v1/indexes/{name}/search")
    def search_get(name: str, id: Annotated[list[Int64] | None, Query(description="item id(s)")] = None,  # noqa: A002
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
        check_cost(snap, len(id) + len(text), "id" if id else "text", k, offset, with_vector)
        return _json(run_search(name, snap, k=k, offset=offset, where=where, with_vector=with_vector,
                                field="id" if id else "text", ids=id, texts=text))

    uploads_running = [0]  # image searches past the checks below; changed on the event loop's thread only

    @app.post("/v1/indexes/{name}/search/image")
    async def search_image(name: str, image: Annotated[list[UploadFile], File(description="PNG, JPEG, WebP, …")],
                           k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
                           offset: Annotated[int, Form(ge=0, le=limits.max_window)] = 0,
                           where: Annotated[str | None, Form()] = None,
                           with_vector: Annotated[bool, Form()] = False):
        """Search by uploaded image(s), embedded with the index's own backbone and preprocessing. Needs the header
        `X-Embedsearch: 1` (or the token)."""
        from fastapi.concurrency import run_in_threadpool

        from embedsearch.sources.images import ImageLoadError, decode_image

        name, snap = snapshot(name)
        check_window(k, offset)
        check_count(len(image), "image")
        # off the event loop: the first call per snapshot reads the catalog, under the lock a search may hold
        await run_in_threadpool(check_cost, snap, len(image), "image", k, offset, with_vector)
        if uploads_running[0] >= limits.max_uploads_at_once:
            raise ApiError(503, "image", f"{uploads_running[0]} image searches are running, the most at once: "
                           "retry in a moment", headers={"Retry-After": "1"})
        uploads_running[0] += 1
        try:
            datas = []
            for i, up in enumerate(image):
                data = await up.read()
                if not data:
                    raise ApiError(400, "image", f"image[{i}] {up.filename or ''}".strip() + " is empty")
                datas.append(data)
            # the pixels the whole request would decode, from each header alone, before any is decoded
            sizes = [_header_pixels(d) for d in datas]
            budget = max(limits.max_request_pixels, limits.max_pixels)
            if sum(sizes) > budget:
                raise ApiError(413, "image", f"{len(datas)} images of {sum(sizes):,} pixels in all, over the limit "
                               f"of {budget:,} per request: send fewer or smaller images")
            decoded = []
            for i, (up, data) in enumerate(zip(image, datas, strict=True)):
                label = f"image[{i}] {up.filename or ''}".strip()
                try:
                    img = await run_in_threadpool(decode_image, io.BytesIO(data), label, limits.max_pixels)
                except ImageLoadError as e:
                    status = 413 if e.kind in ("TooManyPixels", "DecompressionBomb") else 400
                    raise ApiError(status, "image", str(e)) from None
                decoded.append((f"upload:{up.filename or i}", img))
            del datas
            return _json(await run_in_threadpool(lambda: run_search(name, snap, k=k, offset=offset, where=where,
                                                                    with_vector=with_vector, decoded=decoded)))
        finally:
            uploads_running[0] -= 1

    @app.get("/v1/indexes/{name}/items")
    def list_items(name: str, where: str | None = None, limit: int = Query(24, ge=1, le=limits.max_k),
                   offset: int = Query(0, ge=0, le=INT64[1] - limits.max_k - 1)):
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
    def item(name: str, item_id: Annotated[int, ITEM_ID], with_vector: bool = False):
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
    def item_thumbnail(name: str, item_id: Annotated[int, ITEM_ID],
                       size: int = Query(112, ge=limits.thumbnail_sizes[0], le=limits.thumbnail_sizes[1])):
        """The item's image as a PNG thumbnail, read through the dataset root and format allowlist, from a folder
        this server may read (one the user indexed from, or gave with --image-root)."""
        from embedsearch.report.html import to_png

        name, snap = snapshot(name)
        row = item_or_404(snap, item_id)
        img = source_image(snap, item_id, row)
        if img is None:
            raise ApiError(404, "id", f"item {item_id} has no readable image (moved, deleted or not an image)")
        return Response(to_png(img, size), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/indexes/{name}/items/{item_id}/image")
    def item_image(name: str, item_id: Annotated[int, ITEM_ID]):
        """The item's full image as PNG (only with `--originals`)."""
        name, snap = snapshot(name)
        if not originals:
            raise ApiError(403, "id", "original images are not served: start the server with --originals")
        row = item_or_404(snap, item_id)
        img = source_image(snap, item_id, row)  # the same checks as thumbnails
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
        scripts = file.startswith("map-")  # the map page is its script; the other reports are static
        csp = REPORT_CSP.format(scripts=" allow-scripts" if scripts else "",
                                script_src="script-src 'unsafe-inline' 'unsafe-eval'; " if scripts else "")
        return HTMLResponse(p.read_text(errors="replace"), headers={"Content-Security-Policy": csp})

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


def _header_pixels(data: bytes) -> int:
    """Width × height from an image's header, without decoding it; 0 when it does not open (decode_image then
    says why, image by image)."""
    from PIL import Image

    from embedsearch.sources.images import ALLOWED_FORMATS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001 — not an image, or a bomb: decode_image refuses it with its reason
        return 0


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
    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
        raise IndexStateError("--token: use printable ASCII characters only (no spaces): it travels in an HTTP "
                              "header and a cookie")
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
    # without a token, loopback is the only protection: answer only to the names a browser uses for it (not to a
    # page of another site whose DNS name was made to point at 127.0.0.1)
    hosts = None if token else {"127.0.0.1", "localhost", "[::1]"}
    app = create_app(registry, token=token, cors=cors, originals=originals, limits=limits, hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    print(f"embedsearch serve: http://{shown}:{bound}/ ({', '.join(registry.names())})", file=sys.stderr, flush=True)
    for name in registry.names():  # once per index, at start: why its thumbnails will be refused
        served = registry.get(name)
        thumbs = served.current.thumbs if served else None
        if thumbs is not None and thumbs.refused:
            print(f"embedsearch serve: {name}: images not served: {thumbs.refused} (to serve them: --image-root "
                  f"{thumbs.refused_folder})", file=sys.stderr, flush=True)
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
