"""The ASGI layers around the app: `Guard` (who may ask, headers, log, JSON 500) and `BodyLimit` (413).

`add_middleware` stacks them: CORS (with --cors) outside, then Guard, then BodyLimit next to the app."""

import hmac
import logging
import sys
import time
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.requests import cookie_parser

from embedsearch.serve.errors import error_body
from embedsearch.serve.settings import ServeSettings

log = logging.getLogger("embedsearch.serve")

TOKEN_COOKIE = "embedsearch_token"
# The header that makes a POST a request no other site's page can send without a CORS preflight (which this server
# never grants unless --cors names that site): the page sends it with every call; a JSON body or the token also do.
CLIENT_HEADER = "X-Embedsearch"

# On every answer: the page and the API load nothing but their own files, connect nowhere else and are never framed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = ((b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"))


def add_middleware(app: FastAPI, settings: ServeSettings) -> None:
    """Who may ask: Guard (Host, Origin, token, non-simple POSTs), CORS outside it; the body limit inside."""
    app.add_middleware(BodyLimit, limit=settings.limits.max_upload_bytes)
    app.add_middleware(Guard, token=settings.token, hosts=settings.hosts,
                       origins=(settings.cors,) if settings.cors else ())
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", CLIENT_HEADER])


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
            return await error_body(413, "body", f"request body of {int(declared):,} bytes is over the limit of "
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
                return await error_body(413, "body", f"request body is over the limit of {self.limit:,} bytes")(
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

    def __init__(self, app, *, token: str | None, hosts: frozenset[str] | None,
                 origins: tuple[str, ...] = ()):
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
            await error_body(500, "server", f"internal error ({type(e).__name__}); see the server log")(
                scope, receive, send_with_headers)
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            client = scope["client"][0] if scope.get("client") else "-"
            query = _redacted(scope.get("query_string", b"").decode("latin-1"))
            print(f'{client} "{scope["method"]} {scope["path"]!s:.300}{query:.300}" '
                  f"{status[0] if status else '-'} {ms:.1f} ms", file=sys.stderr, flush=True)

    def refusal(self, scope):
        """The answer that refuses this request before the app sees it (or its body is read), or None."""
        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.lower(), v)
        host, origin = headers.get(b"host"), headers.get(b"origin")
        host = host.lower() if host is not None else None
        if self.hosts is not None and _host_name(host) not in self.hosts:
            # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 still sends its own Host.
            # Any port: an SSH tunnel or a forwarded port reaches this one under another number.
            return error_body(421, "Host", f"Host {_shown(host)} is not this server's: it answers to "
                              f"{', '.join(sorted(h.decode() for h in self.hosts))} (any port)")
        if origin is not None and origin not in self.origins and not (
                host and origin in (b"http://" + host, b"https://" + host)):
            return error_body(403, "Origin", f"a request from a page of {_shown(origin)} is refused: this server "
                              "answers its own page only (start it with --cors ORIGIN to allow one other)")
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS":  # a CORS preflight carries no credentials; the CORS layer answers it
            return None
        if self.token is not None and path != "/v1/health":
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                offered = auth[7:]
            else:
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
                return error_body(401, "Authorization", "missing or wrong token: send `Authorization: Bearer "
                                  "TOKEN` (the page: open /?token=TOKEN once)")
        if method not in ("GET", "HEAD") and not (
                headers.get(CLIENT_HEADER.lower().encode()) or b"authorization" in headers
                or headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/json"):
            # a form post or a fetch with a "simple" body needs no preflight: any site's page could send it
            return error_body(403, CLIENT_HEADER, f"a {method} must carry the header `{CLIENT_HEADER}: 1`, a JSON "
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
