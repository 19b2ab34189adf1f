"""The item routes: browsing the catalog, one item's row and vector, its thumbnail and its full image."""

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from embedsearch.core.errors import QueryError
from embedsearch.report.html import to_png
from embedsearch.serve.deps import INT64, RegistryDep, SettingsDep, item_or_404, served, source_image
from embedsearch.serve.errors import ApiError, finite, json_response
from embedsearch.serve.settings import Limits

ITEM_ID = Path(ge=INT64[0], le=INT64[1], description="item id (int64)")


def make_router(limits: Limits) -> APIRouter:
    """The item routes, their bounds taken from `limits` (so that the OpenAPI description shows them)."""
    router = APIRouter()

    @router.get("/v1/indexes/{name}/items")
    def list_items(name: str, registry: RegistryDep, where: str | None = None,
                   limit: int = Query(24, ge=1, le=limits.max_k),
                   offset: int = Query(0, ge=0, le=INT64[1] - limits.max_k - 1)):
        """Items in id order, optionally filtered by `where` (browsing)."""
        snap = served(registry, name)
        try:
            sel = snap.ix.select(where, limit=limit + 1, offset=offset)
        except QueryError as e:
            raise ApiError(400, "where", str(e)) from None
        items = [{"id": int(i), "label": lab, "split": sp, "path": p}
                 for i, lab, sp, p in zip(sel["id"][:limit], sel["label"], sel["split"], sel["path"], strict=False)]
        return json_response({"index": name, "snapshot": snap.key, "offset": offset, "items": items,
                              "has_more": len(sel["id"]) > limit})

    @router.get("/v1/indexes/{name}/items/{item_id}")
    def item(name: str, item_id: Annotated[int, ITEM_ID], registry: RegistryDep, with_vector: bool = False):
        """One item's catalog row (and its stored vector with `with_vector`)."""
        snap = served(registry, name)
        row = item_or_404(snap, item_id)
        out = {"index": name, "snapshot": snap.key, "item": {c: finite(v) for c, v in row.items()}}
        if with_vector:
            try:
                out["vector"] = snap.ix.vectors(np.asarray([item_id]))[0].tolist()
            except QueryError as e:
                raise ApiError(404, "id", str(e)) from None
        return json_response(out)

    @router.get("/v1/indexes/{name}/items/{item_id}/thumbnail")
    def item_thumbnail(name: str, item_id: Annotated[int, ITEM_ID], registry: RegistryDep,
                       size: int = Query(112, ge=limits.thumbnail_sizes[0], le=limits.thumbnail_sizes[1])):
        """The item's image as a PNG thumbnail, read through the dataset root and format allowlist, from a folder
        this server may read (one the user indexed from, or gave with --image-root)."""
        snap = served(registry, name)
        row = item_or_404(snap, item_id)
        img = source_image(snap, item_id, row)
        if img is None:
            raise ApiError(404, "id", f"item {item_id} has no readable image (moved, deleted or not an image)")
        return Response(to_png(img, size), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @router.get("/v1/indexes/{name}/items/{item_id}/image")
    def item_image(name: str, item_id: Annotated[int, ITEM_ID], registry: RegistryDep, settings: SettingsDep):
        """The item's full image as PNG (only with `--originals`)."""
        snap = served(registry, name)
        if not settings.originals:
            raise ApiError(403, "id", "original images are not served: start the server with --originals")
        row = item_or_404(snap, item_id)
        img = source_image(snap, item_id, row)  # the same checks as thumbnails
        if img is None:
            raise ApiError(404, "id", f"item {item_id} has no readable image")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    return router
