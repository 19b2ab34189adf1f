"""The search routes: by ids, vectors, texts (JSON body or query string) or uploaded images.

Each is answered through the CLI's own `query_vectors` and `iter_search`."""

import io
import warnings
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from embedsearch.core.errors import QueryError
from embedsearch.query.search import iter_search, query_vectors
from embedsearch.serve.deps import Int64, RegistryDep, check_cost, check_count, check_window, served
from embedsearch.serve.errors import ApiError, finite, json_response
from embedsearch.serve.settings import Limits
from embedsearch.serve.snapshots import ServedState
from embedsearch.sources.images import ALLOWED_FORMATS, ImageLoadError, decode_image


def make_router(limits: Limits) -> APIRouter:
    """The search routes, their bounds taken from `limits` (so that the OpenAPI description shows them)."""
    router = APIRouter()
    K = Query(10, ge=1, le=limits.max_k, description="hits per query")
    OFFSET = Query(0, ge=0, le=limits.max_window, description="skip this many hits (paging)")

    class SearchBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[Int64] = Field(default_factory=list, description="query by item id (the item is not returned)")
        vectors: list[list[float]] = Field(default_factory=list, description="query vectors in the index's space")
        texts: list[str] = Field(default_factory=list, description="text queries (CLIP-style indexes)")
        k: int = Field(10, ge=1, le=limits.max_k)
        offset: int = Field(0, ge=0, le=limits.max_window)
        where: str | None = Field(None, description="SQL predicate over the catalog columns, as in the CLI")
        with_vector: bool = False

    @router.post("/v1/indexes/{name}/search")
    def search_json(name: str, body: SearchBody, registry: RegistryDep):
        """Search by ids, vectors or texts (JSON body)."""
        snap = served(registry, name)
        check_window(limits, body.k, body.offset)
        for f in ("ids", "vectors", "texts"):
            check_count(limits, len(getattr(body, f)), f)
        if not (body.ids or body.vectors or body.texts):
            raise ApiError(422, "body", "give ids, vectors or texts (images: POST …/search/image)")
        field = next(f for f in ("ids", "vectors", "texts") if getattr(body, f))
        check_cost(limits, snap, len(body.ids) + len(body.vectors) + len(body.texts), field, body.k,
                   body.offset, body.with_vector)
        vectors = parse_vectors(body.vectors, snap.ix.dim) if body.vectors else None
        return json_response(run_search(name, snap, k=body.k, offset=body.offset, where=body.where,
                                        with_vector=body.with_vector, ids=body.ids, texts=body.texts,
                                        vectors=vectors))

    @router.get("/v1/indexes/{name}/search")
    def search_get(name: str, registry: RegistryDep,
                   id: Annotated[list[Int64] | None, Query(description="item id(s)")] = None,  # noqa: A002
                   text: Annotated[list[str] | None, Query(description="text query(ies)")] = None, k: int = K,
                   offset: int = OFFSET, where: str | None = None, with_vector: bool = False):
        """Search by id(s) or text(s) (query string: shareable URLs)."""
        id, text = id or [], text or []  # noqa: A001
        snap = served(registry, name)
        check_window(limits, k, offset)
        check_count(limits, len(id), "id")
        check_count(limits, len(text), "text")
        if not (id or text):
            raise ApiError(422, "id", "give id=… or text=… (vectors: POST JSON; images: POST …/search/image)")
        check_cost(limits, snap, len(id) + len(text), "id" if id else "text", k, offset, with_vector)
        return json_response(run_search(name, snap, k=k, offset=offset, where=where, with_vector=with_vector,
                                        field="id" if id else "text", ids=id, texts=text))

    uploads_running = [0]  # image searches past the checks below; changed on the event loop's thread only

    @router.post("/v1/indexes/{name}/search/image")
    async def search_image(name: str, image: Annotated[list[UploadFile], File(description="PNG, JPEG, WebP, …")],
                           registry: RegistryDep,
                           k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
                           offset: Annotated[int, Form(ge=0, le=limits.max_window)] = 0,
                           where: Annotated[str | None, Form()] = None,
                           with_vector: Annotated[bool, Form()] = False):
        """Search by uploaded image(s), embedded with the index's own backbone and preprocessing. Needs the header
        `X-Embedsearch: 1` (or the token)."""
        snap = served(registry, name)
        check_window(limits, k, offset)
        check_count(limits, len(image), "image")
        # off the event loop: the first call per snapshot reads the catalog
        await run_in_threadpool(check_cost, limits, snap, len(image), "image", k, offset, with_vector)
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
            return json_response(await run_in_threadpool(
                lambda: run_search(name, snap, k=k, offset=offset, where=where, with_vector=with_vector,
                                   decoded=decoded)))
        finally:
            uploads_running[0] -= 1

    return router


def run_search(name: str, snap: ServedState, *, k: int, offset: int, where: str | None, with_vector: bool,
               field: str | None = None, **queries) -> dict:
    ix = snap.ix
    field = field or next((f for f, v in queries.items() if v is not None and len(v)), "query")
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
            h.update({c: finite(v) for c, v in meta.get(h["id"], {}).items() if c not in h})
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


def _header_pixels(data: bytes) -> int:
    """Width × height from an image's header, without decoding it; 0 when it does not open (decode_image then
    says why, image by image)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001 — not an image, or a bomb: decode_image refuses it with its reason
        return 0
