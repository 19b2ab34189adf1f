"""The API's JSON answers: `ApiError`, its one-line `{"error", "field"}` body, the handlers, the encoding.

The exception handlers turn every error a route raises into that body; `json_response` encodes results (numpy
scalars, bytes) and `finite` turns NaN into null."""

import json
import math

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedsearch.core.errors import EmbedsearchError, IndexStateError, UntrustedError, first_line


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers


def error_body(status: int, field: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": first_line(message, 500) if message else "error", "field": field},
                        status_code=status, headers=headers)


def json_response(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj, default=_plain, allow_nan=False), status_code=status,
                    media_type="application/json")


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return None
    return str(v)  # timestamps, decimals, UUIDs


def finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# -- errors: one line of JSON naming the field -------------------------------------------------------------


async def _api_error(request: Request, e: ApiError):
    return error_body(e.status, e.field, e.message, e.headers)


async def _invalid(request: Request, e: RequestValidationError):
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form")]
    field = ".".join(loc) or "body"
    if err.get("type") == "json_invalid":
        return error_body(400, "body", f"malformed JSON: {err.get('msg', '')}")
    return error_body(422, field, f"{field}: {err.get('msg', 'invalid')}")


async def _http(request: Request, e: StarletteHTTPException):
    return error_body(e.status_code, "path" if e.status_code == 404 else "request", str(e.detail))


async def _state(request: Request, e: EmbedsearchError):
    # a snapshot whose files a repair replaced under it: the next request reopens the index
    for served in request.app.state.registry.loaded():
        served.recheck()
    if isinstance(e, IndexStateError):
        return error_body(503, "name", f"{e} (retry: the index is changing)")
    return error_body(400, "request", str(e))


async def _untrusted(request: Request, e: UntrustedError):  # e.g. an upload unverified index code would embed
    return error_body(403, "name", str(e))


def register_error_handlers(app: FastAPI) -> None:
    """Every error a route raises becomes one line of JSON naming the field at fault. A 500 is not among them:
    `middleware.Guard` answers it (see there why)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(EmbedsearchError, _state)
    app.add_exception_handler(UntrustedError, _untrusted)
