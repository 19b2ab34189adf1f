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

Where things live (FastAPI's "bigger applications" layout): `settings` (Limits, ServeSettings), `errors`
(ApiError, the JSON error body and handlers), `middleware` (Guard, BodyLimit), `deps` (what routes share:
the registry, the served snapshot, the limit checks), `routers/` (indexes, search, items, page), `runner`
(`serve()`: the socket and uvicorn). Here: `create_app`, which joins them. The routes read the catalog through
`Index` and the results through `ResultStore`, never by SQL of their own.
"""

from importlib.metadata import version

from fastapi import FastAPI

from embedsearch.serve.errors import register_error_handlers
from embedsearch.serve.middleware import add_middleware
from embedsearch.serve.routers import indexes, items, page, search
from embedsearch.serve.settings import ServeSettings
from embedsearch.serve.snapshots import Registry


def create_app(registry: Registry, settings: ServeSettings | None = None) -> FastAPI:
    """The app answering for the indexes of `registry`, as `settings` say (default: `ServeSettings()`). It
    runs under uvicorn (`serve`) or in-process under `fastapi.testclient.TestClient`; routes reach registry
    and settings through `deps`."""
    settings = settings if settings is not None else ServeSettings()
    app = FastAPI(title="embedsearch", version=version("embedsearch"), docs_url=None, redoc_url=None,
                  description="Search and browse embedsearch indexes. Errors: `{\"error\": …, \"field\": …}`.")
    app.state.registry, app.state.settings = registry, settings
    register_error_handlers(app)
    add_middleware(app, settings)
    app.include_router(indexes.router)
    app.include_router(search.make_router(settings.limits))
    app.include_router(items.make_router(settings.limits))
    app.include_router(page.make_router())
    return app

