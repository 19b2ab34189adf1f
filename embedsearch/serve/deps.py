"""What the routes share: the app's registry and settings, an index's served snapshot, the `Limits` checks.

The registry and settings are FastAPI dependencies (a test may override them); the rest are plain functions
the routes call once FastAPI has validated the request. Also the lookups of an item and its image."""

from typing import Annotated

from fastapi import Depends, Request
from pydantic import Field

from embedsearch.core.errors import UntrustedError
from embedsearch.serve.errors import ApiError
from embedsearch.serve.settings import Limits, ServeSettings
from embedsearch.serve.snapshots import Registry, ServedState

INT64 = (-(2**63), 2**63 - 1)
# ids are int64: a larger number is a 422 naming the field, not an OverflowError deep in numpy (a 500)
Int64 = Annotated[int, Field(ge=INT64[0], le=INT64[1])]


# async: FastAPI calls them on the event loop, not through the thread pool
async def registry(request: Request) -> Registry:
    return request.app.state.registry


async def settings(request: Request) -> ServeSettings:
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(registry)]
SettingsDep = Annotated[ServeSettings, Depends(settings)]


def served(registry: Registry, name: str) -> ServedState:
    """The current snapshot of index `name`. Routes call it in their body, not as a dependency: FastAPI runs
    dependencies before it validates the parameters, and a bad parameter is a 422 whatever the name."""
    state = registry.get(name)
    if state is None:
        raise ApiError(404, "name", f"no index named {name!r} is served here (GET /v1/indexes lists them)")
    return state.get()


# -- what a request may ask for ----------------------------------------------------------------------------


def check_window(limits: Limits, k: int, offset: int) -> None:
    if k + offset > limits.max_window:
        raise ApiError(422, "offset", f"k + offset = {k + offset:,} is over the limit of {limits.max_window:,}")


def check_count(limits: Limits, n: int, field: str) -> None:
    if n > limits.max_queries:
        raise ApiError(422, field, f"{field}: {n} queries in one request, over the limit of {limits.max_queries}")


def check_cost(limits: Limits, snap: ServedState, n: int, field: str, k: int, offset: int,
               with_vector: bool) -> None:
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


# -- items and their images --------------------------------------------------------------------------------


def item_or_404(snap: ServedState, item_id: int) -> dict:
    row = snap.ix.items_by_id([item_id]).get(item_id)
    if row is None:
        raise ApiError(404, "id", f"no item {item_id} in index {snap.ix.name}")
    return row


def source_image(snap: ServedState, item_id: int, row: dict):
    try:
        return snap.thumbs.image(item_id, row.get("path"), strict=True)
    except UntrustedError:  # the reason names folders of this machine: the server's log has it, not the client
        raise ApiError(403, "id", images_refused(snap) or f"item {item_id}: its path leaves the index's image "
                       "folder; it is not served") from None


def images_refused(snap: ServedState) -> str | None:
    if snap.thumbs.refused is None:
        return None
    return (f"the images of index {snap.ix.name} are not served: they are not in a folder this server may read "
            "(start it with --image-root DIR; its start-up message names DIR)")
