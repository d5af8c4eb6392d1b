"""How much a caller may send: request bodies of the API and the size of an uploaded file.

The API's bodies are read whole before any field is checked, so their size is capped here, before
reading: settings changes are small; generation bodies carry at most a batch of pictures as
base64. Gradio streams uploads to disk and stops a file at `max_file_size`, which follows the
`upload_max_megapixels` setting (the file of the largest picture the engine would take).
"""

from __future__ import annotations

from typing import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from engine.request import MAX_BATCH_SIZE

from .access import route_path
from .asgi_bodies import read_at_most, replay

MIB = 1024 * 1024
OPTIONS_BODY_BYTES = 1 * MIB  # POST /sdapi/v1/options: every setting there is, many times over
UPLOAD_ROUTES = ("/gradio_api/upload", "/upload")


def upload_file_bytes(megapixels: float) -> int:
    """The largest file the upload routes take: 3 bytes per pixel (a picture of the largest size
    the engine takes, stored without compression) and 1 MiB for headers and metadata."""
    return int(megapixels * 1_000_000 * 3) + MIB


def api_body_bytes(megapixels: float) -> int:
    """A generation body: a batch of init images, a mask and a ControlNet picture as base64."""
    return (MAX_BATCH_SIZE + 2) * upload_file_bytes(megapixels) * 4 // 3 + MIB


class BodyLimits:
    """ASGI middleware: refuse with 413 a body longer than its route's limit (None: no limit)
    before the app reads it; a body without a length is counted as it arrives."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int | None]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(route_path(scope))
        if limit is None:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) <= limit:
            await self.app(scope, receive, send)  # the server reads no more than the length says
            return
        body = await read_at_most(receive, limit)
        if body is None:
            await _too_large(scope, receive, send, limit)
            return
        await self.app(scope, replay(body), send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    from starlette.responses import JSONResponse

    size = f"{limit / MIB:.1f} MiB" if limit >= MIB else f"{limit // 1024} KiB"
    detail = f"The request body is too large: {scope['path']} takes at most {size}"
    await JSONResponse({"error": "PayloadTooLarge", "detail": detail, "body": "", "errors": detail},
                       status_code=413)(scope, receive, send)
