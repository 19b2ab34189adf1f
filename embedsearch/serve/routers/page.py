"""The web page (`/` and its `/static` files) and `/docs`, the OpenAPI description as one plain HTML page."""

from html import escape
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from embedsearch.serve.errors import ApiError

KINDS = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css"}


def make_router() -> APIRouter:
    """The page's routes, with its files read once, when the app is made."""
    router = APIRouter()
    static = resources.files("embedsearch.serve") / "static"
    assets = {f: (static / f).read_bytes() for f in ("index.html", "app.js", "style.css")}

    @router.get("/docs", include_in_schema=False)
    def docs(request: Request):
        return HTMLResponse(_docs_page(request.app.openapi()))

    @router.get("/", include_in_schema=False)
    def page():
        return Response(assets["index.html"], media_type=KINDS["html"])

    @router.get("/static/{file}", include_in_schema=False)
    def asset(file: str):
        if file not in assets or file == "index.html":
            raise ApiError(404, "file", f"no static file {file!r}")
        return Response(assets[file], media_type=KINDS[file.rsplit(".", 1)[1]])

    return router


def _docs_page(spec: dict) -> str:
    """The OpenAPI description as one plain HTML page (FastAPI's own /docs loads Swagger UI from a CDN)."""
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
