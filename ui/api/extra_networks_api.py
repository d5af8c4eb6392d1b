"""The extra network cards' thumbnails: GET /sd_extra_networks/thumb?kind=lora&file=sub/name.png.

Only a picture that is a listed network's preview, inside that kind's model folders, is served
(engine/networks/network_catalogue.py decides); anything else is a 404 that says no more. The
route sits behind the same access guard as the page (ui/access.py): with a login, only a logged-in
browser (or HTTP Basic with a UI login) gets a thumbnail.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from ..context import UIContext
from ..network_cards import sync_checkpoints

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# The card's URL carries the file's modification time, so a cached copy is never stale.
CACHE_CONTROL = "private, max-age=604800"


def build_router(ctx: UIContext) -> APIRouter:
    router = APIRouter(prefix="/sd_extra_networks", tags=["extra networks"])
    catalogue = ctx.engine.addons.networks

    @router.get("/thumb", include_in_schema=False)
    def thumb(kind: str = Query("lora", max_length=40), file: str = Query("", max_length=4096),
              mtime: str | None = Query(None, max_length=40)) -> FileResponse:
        if kind == "checkpoints":
            sync_checkpoints(ctx)
        found = catalogue.preview_file(kind, file)
        if found is None:
            raise HTTPException(status_code=404, detail="No such preview")
        return FileResponse(found, media_type=MEDIA_TYPES.get(found.suffix.lower(), "application/octet-stream"),
                            headers={"Cache-Control": CACHE_CONTROL})

    return router
