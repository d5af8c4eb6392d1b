"""One HTTP server for the UI and the API: FastAPI with the Gradio app mounted at /.

Gradio's own login does not cover routes we add, so the API checks HTTP Basic credentials itself
and ui/access.py guards everything else.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import anyio
import gradio as gr
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route

from engine.errors import UserError
from engine.settings.flags import cors_origins, is_exposed
from engine.version import VERSION

from .access import AccessGuard, check_credentials, mounted_gradio_app
from .api import controlnet_api, extra_networks_api, internal_api, system_api
from .api.routes import build_router
from .body_limits import OPTIONS_BODY_BYTES, UPLOAD_ROUTES, BodyLimits, api_body_bytes, upload_file_bytes
from .context import UIContext
from .gradio_endpoints import UnknownEndpointGuard
from .layout import build_app, page_css, page_js
from .login_throttle import LoginThrottle

log = logging.getLogger(__name__)


def _printable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of a request value for an error message."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "..."
    if depth > 3:
        return "..."
    if isinstance(value, dict):
        return {str(k)[:100]: _printable(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [_printable(v, depth + 1) for v in value[:50]]
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)[:200]


def api_auth_dependency(allowed: list[tuple[str, str]] | None):
    basic = HTTPBasic(auto_error=False)

    async def require(request: Request) -> None:
        if not allowed:
            return
        credentials: HTTPBasicCredentials | None = await basic(request)
        if credentials is None or not check_credentials(allowed, credentials.username,
                                                        credentials.password):
            # No WWW-Authenticate: a browser that was asked would keep the credentials and send
            # them with any other site's request (only the docs page asks, ui/access.py).
            raise HTTPException(status_code=401, detail="Incorrect or missing API credentials")
        request.state.api_user = credentials.username

    return require


def create_server(ctx: UIContext):
    """The ASGI app app.py serves: the API, the /internal routes and the page (no page with
    --nowebui), guarded; under --subpath when given."""
    app = _create_app(ctx)
    subpath = getattr(ctx.flags, "subpath", None)
    return under_subpath(app, subpath) if subpath else app


def error_body(error: str, detail: Any, body: Any = "", errors: str = "", **ours: Any) -> dict:
    """An error answer in the shape the mature API uses ({error, detail, body, errors}), with
    our own keys (field) beside them."""
    return {"error": error, "detail": detail, "body": body, "errors": errors or str(detail), **ours}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content=error_body(
            type(error).__name__, error.message, field=error.field))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 list of problems in `detail`, with the offending input made printable:
        echoing NaN or a huge body back as-is would turn a bad request into a 500."""
        errors = jsonable_encoder([{**item, "input": _printable(item.get("input"))} for item in error.errors()])
        summary = "; ".join(f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg', '')}"
                            for item in errors)
        return JSONResponse(status_code=422, content=error_body(
            "RequestValidationError", errors, body=_printable(getattr(error, "body", None)) or "",
            errors=summary))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=error.status_code, headers=getattr(error, "headers", None),
                            content=error_body(type(error).__name__, error.detail,
                                               errors=f"{error.status_code}: {error.detail}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug, not the caller's fault: logged with its traceback, answered in the same shape.
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse(status_code=500, content=error_body(
            type(error).__name__, "The server failed on this request (its log has the details)"))


def _create_app(ctx: UIContext) -> FastAPI:
    flags = ctx.flags
    app = FastAPI(title="SD Studio API", version=VERSION, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json")
    install_error_handlers(app)

    @app.middleware("http")
    async def log_api_calls(request: Request, call_next):
        """With the `api_log_requests` setting: one line per API call, to see who uses a shared UI."""
        if not request.url.path.startswith("/sdapi/") or not ctx.settings["api_log_requests"]:
            return await call_next(request)
        started = time.perf_counter()
        response = await call_next(request)
        user = getattr(request.state, "api_user", None) or (request.client.host if request.client else "?")
        log.info("API %s %s by %s -> %d in %.2fs", request.method, request.url.path, user,
                 response.status_code, time.perf_counter() - started)
        return response

    if flags.api:
        # Without --api-auth, a UI login (if any) protects the API too: never an open back door.
        credentials = flags.api_auth or flags.gradio_auth
        app.include_router(build_router(ctx, api_auth_dependency(credentials)))
        app.include_router(system_api.build_router(ctx, api_auth_dependency(credentials)))
        app.include_router(controlnet_api.build_router(ctx, api_auth_dependency(credentials)))
    app.include_router(internal_api.build_router(ctx))
    app.include_router(extra_networks_api.build_router(ctx))  # the cards' thumbnails, behind the guard

    gradio_app = gradio_blocks = None
    if not getattr(flags, "nowebui", False):
        blocks = build_app(ctx)
        blocks.queue(api_open=False, default_concurrency_limit=1)
        logins = flags.gradio_auth
        gr.mount_gradio_app(
            app, blocks, path="",
            # Our check, so the login form compares in constant time like the API does.
            auth=(lambda user, password: check_credentials(logins, user, password)) if logins else None,
            auth_message="Log in to SD Studio" if flags.gradio_auth else None,
            footer_links=[], css=page_css(), js=page_js(), show_error=True, ssr_mode=False,
            # Gradio's run history records every call in the browser and can copy them to the Hugging
            # Face hub: neither belongs in a private studio.
            run_history=False,
        )
        gradio_app, gradio_blocks = mounted_gradio_app(app), blocks
        # Gradio accepts a file path in an event only if it came from its upload folder, but
        # checks that only for Blocks it launched itself; mounted ones must say so.
        blocks.has_launched = True
    else:
        @app.get("/", include_in_schema=False)
        def api_only() -> dict:
            return {"detail": "API only (--nowebui): the routes are under /sdapi/v1, documented at /docs"}
    if gradio_app is not None:
        # Inside the guard below: only a caller allowed in learns which events exist.
        app.add_middleware(UnknownEndpointGuard, blocks=lambda: blocks)
    # Always ours: without it Gradio adds its own, which lets any origin in once the UI is
    # reached by a LAN address. No origin is allowed unless the owner names it; "*" never
    # carries credentials.
    origins = cors_origins(flags)
    # Inside the guard: a caller who may not get in is refused before anything is read.
    app.add_middleware(BodyLimits, limit_for=lambda path: _body_limit(path, ctx.settings["upload_max_megapixels"],
                                                                      blocks=gradio_blocks))
    app.add_middleware(AccessGuard, ui_logins=flags.gradio_auth, api_logins=flags.api_auth,
                       gradio_app=lambda: gradio_app, local_only=not is_exposed(flags),
                       allowed_origins=origins, allowed_origin_regex=getattr(flags, "cors_allow_origins_regex", None),
                       throttle=LoginThrottle())
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                       allow_origin_regex=getattr(flags, "cors_allow_origins_regex", None),
                       allow_credentials="*" not in origins)

    @app.on_event("startup")
    async def widen_thread_pool() -> None:
        # API calls wait for their job in a worker thread; with the default 40 threads, a full
        # queue would starve /progress, /interrupt and the UI before "queue full" could be said.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, flags.queue_size + 40)

    return app


def _body_limit(path: str, megapixels: float, blocks) -> int | None:
    """The most bytes a request to `path` may send (None: the route reads what it needs itself)."""
    if path.startswith("/sdapi/v1/options"):
        return OPTIONS_BODY_BYTES
    if path.startswith(("/sdapi/", "/controlnet/")):
        return api_body_bytes(megapixels)
    if path.endswith(UPLOAD_ROUTES) and blocks is not None:
        # Gradio stops each uploaded file at this size while it streams it (a 413); set per
        # upload, so a change of the setting applies at once.
        blocks.max_file_size = upload_file_bytes(megapixels)
    return None


def under_subpath(app, subpath: str) -> Starlette:
    """Everything at `subpath` (e.g. /sd/sdapi/v1/...), as a reverse proxy forwarding that prefix
    expects; the bare root redirects there and nothing else answers outside it."""
    async def to_subpath(request: Request) -> RedirectResponse:
        return RedirectResponse(subpath + "/")

    outer = Starlette(routes=[Route("/", to_subpath), Route(subpath, to_subpath), Mount(subpath, app=app)])
    # Starting the outer app starts the inner one (its thread pool and Gradio's queue).
    outer.router.lifespan_context = app.router.lifespan_context
    return outer
