"""One HTTP server for the UI and the API: FastAPI with the Gradio app mounted at /.

Gradio's own login does not cover routes we add, so the API checks HTTP Basic credentials itself.
"""

from __future__ import annotations

import logging
import secrets

import gradio as gr
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from engine.errors import UserError
from engine.version import VERSION

from .api import controlnet_api
from .api.routes import build_router
from .context import UIContext
from .layout import build_app, page_css, page_js

log = logging.getLogger(__name__)


def _check_credentials(allowed: list[tuple[str, str]], user: str, password: str) -> bool:
    # Compare every pair in constant time so timing does not reveal which user exists.
    ok = False
    for name, secret in allowed:
        ok |= secrets.compare_digest(user.encode(), name.encode()) & \
            secrets.compare_digest(password.encode(), secret.encode())
    return ok


def api_auth_dependency(allowed: list[tuple[str, str]] | None):
    basic = HTTPBasic(auto_error=False)

    async def require(request: Request) -> None:
        if not allowed:
            return
        credentials: HTTPBasicCredentials | None = await basic(request)
        if credentials is None or not _check_credentials(allowed, credentials.username,
                                                         credentials.password):
            raise HTTPException(status_code=401, detail="Incorrect or missing API credentials",
                                headers={"WWW-Authenticate": "Basic"})
        request.state.api_user = credentials.username

    return require


def create_server(ctx: UIContext) -> FastAPI:
    flags = ctx.flags
    app = FastAPI(title="SD Studio API", version=VERSION, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json")

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content={
            "error": type(error).__name__, "detail": error.message, "field": error.field})

    if flags.api:
        # Without --api-auth, a UI login (if any) protects the API too: never an open back door.
        credentials = flags.api_auth or flags.gradio_auth
        app.include_router(build_router(ctx, api_auth_dependency(credentials)))
        app.include_router(controlnet_api.build_router(ctx, api_auth_dependency(credentials)))

    blocks = build_app(ctx)
    blocks.queue(api_open=False, default_concurrency_limit=1)
    gr.mount_gradio_app(
        app, blocks, path="", auth=flags.gradio_auth,
        auth_message="Log in to SD Studio" if flags.gradio_auth else None,
        footer_links=[], css=page_css(), js=page_js(), show_error=True, ssr_mode=False,
    )
    return app
