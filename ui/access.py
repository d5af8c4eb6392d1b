"""Who may reach what, for a server shared on a LAN.

Gradio's login covers only Gradio's own routes, and not all of those (its monitoring and heartbeat
routes, for example). So one guard in front of the whole app decides for every request: with
--gradio-auth, nothing but the login page and the static files it needs answers without a login
(a Gradio session cookie, or HTTP Basic credentials for scripts). The API routes check their own
HTTP Basic credentials too (ui/server.py); --api-auth may give them separate logins.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Callable, Iterable

from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

Logins = list[tuple[str, str]]

# What the login page itself loads before anyone has logged in: the page, its scripts, styles,
# fonts and icons, and the login form's target. Nothing here reads or changes any state.
PUBLIC_EXACT = frozenset({"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico",
                          "/manifest.json", "/robots.txt", "/pwa_icon", "/login_check", "/login_check/"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
# Routes that check their own (API) credentials.
API_PREFIXES = ("/sdapi/", "/controlnet/")
# The web UI's own helper routes: the API's logins over HTTP Basic, or a UI session.
INTERNAL_PREFIX = "/internal/"


def check_credentials(allowed: Iterable[tuple[str, str]], user: str, password: str) -> bool:
    """Whether user:password is one of the allowed logins. Every pair is compared, in constant
    time, so the time taken does not reveal which user names exist or how much matched."""
    ok = False
    for name, secret in allowed:
        ok |= secrets.compare_digest(user.encode(), name.encode()) & \
            secrets.compare_digest(password.encode(), secret.encode())
    return ok


def basic_credentials(headers: dict[bytes, bytes]) -> tuple[str, str] | None:
    value = headers.get(b"authorization", b"")
    scheme, _, encoded = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def is_loopback_host(host: bytes | None) -> bool:
    """Whether a Host header names this machine by a loopback name (any port)."""
    if not host:
        return True  # HTTP/1.0 clients send none; browsers always do
    text = host.decode("latin-1").strip().lower()
    name = text[1:text.index("]")] if text.startswith("[") and "]" in text else text.rsplit(":", 1)[0]
    return name in ("localhost", "::1") or name.startswith("127.") and name.replace(".", "").isdigit()


def is_public(path: str) -> bool:
    if ".." in path or "\\" in path or "//" in path:
        return False  # static routes get plain file names; anything else needs a login first
    return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)


def _cookies(headers: dict[bytes, bytes]) -> dict[str, str]:
    jar = {}
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            jar[name] = value
    return jar


class AccessGuard:
    """ASGI middleware: with UI logins set, refuse every non-public, non-API request (HTTP and
    websocket) that carries neither a valid Gradio session nor valid HTTP Basic credentials."""

    def __init__(self, app: ASGIApp, ui_logins: Logins | None, api_logins: Logins | None,
                 gradio_app: Callable[[], object | None], local_only: bool = False):
        self.app = app
        # Not shared on the network: answer only to requests addressed to this machine by a
        # loopback name, so a web page whose domain re-resolves to 127.0.0.1 (DNS rebinding)
        # cannot drive the UI, install extensions or read outputs.
        self.local_only = local_only
        self.ui_logins = ui_logins or []
        self.api_logins = api_logins or []
        self.gradio_app = gradio_app  # found after mounting; holds the session tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.local_only and \
                not is_loopback_host(dict(scope.get("headers") or []).get(b"host")):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await JSONResponse({"error": "Forbidden", "detail": "This server answers only to localhost "
                                "addresses; start it with --listen to share it on the network"},
                               status_code=403)(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse({"error": "Unauthorized", "detail": "Log in first"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="SD Studio"'})
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        path = route_path(scope)
        headers = dict(scope.get("headers") or [])
        if path.startswith(INTERNAL_PREFIX) and self.ui_logins and self._has_session(headers):
            return True
        if path.startswith(API_PREFIXES + (INTERNAL_PREFIX,)):
            # The API's logins (the UI's when --api-auth is not given), over HTTP Basic. The API
            # routes check again themselves; this also covers any path under these prefixes that
            # no API route answers.
            api_logins = self.api_logins or self.ui_logins
            login = basic_credentials(headers)
            return not api_logins or (login is not None and check_credentials(api_logins, *login))
        if not self.ui_logins:
            # The UI is open by the owner's choice; only the API's own docs follow --api-auth.
            if self.api_logins and path in ("/docs", "/openapi.json", "/docs/oauth2-redirect"):
                login = basic_credentials(headers)
                return login is not None and check_credentials(self.api_logins, *login)
            return True
        if is_public(path):
            return True
        login = basic_credentials(headers)
        if login is not None:
            return check_credentials(self.ui_logins + self.api_logins, *login)
        return self._has_session(headers)

    def _has_session(self, headers: dict[bytes, bytes]) -> bool:
        app = self.gradio_app()
        if app is None:
            return False
        jar = _cookies(headers)
        cookie_id = getattr(app, "cookie_id", "")
        tokens = getattr(app, "tokens", {})
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            token = jar.get(name)
            if token and token in tokens:
                return True
        return False


def route_path(scope: Scope) -> str:
    """The path below where this app is mounted (--subpath mounts it below a prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def mounted_gradio_app(app) -> object | None:
    """The Gradio app mounted inside our FastAPI app (it keeps the login sessions)."""
    for route in app.routes:
        if isinstance(route, Mount) and hasattr(route.app, "tokens"):
            return route.app
    return None


def route_table(app, prefix: str = "") -> list[tuple[str, tuple[str, ...]]]:
    """Every (path, methods) the app serves, mounted apps and included routers included, so a
    test can try each one and no route added later is forgotten."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for route in getattr(app, "routes", None) or getattr(getattr(app, "router", None), "routes", []):
        if isinstance(route, Mount):
            found += route_table(route.app, prefix + route.path)
        elif hasattr(route, "effective_candidates"):  # FastAPI's included router
            found += _included(route, prefix)
        elif hasattr(route, "path"):
            found.append((prefix + route.path, tuple(sorted(getattr(route, "methods", None) or {"WS"}))))
    return found


def _included(router, prefix: str) -> list[tuple[str, tuple[str, ...]]]:
    found = []
    for candidate in router.effective_candidates():
        if hasattr(candidate, "effective_candidates"):
            found += _included(candidate, prefix)
            continue
        route = candidate.original_route
        path = candidate.path or getattr(route, "path", "")
        found.append((prefix + path, tuple(sorted(getattr(route, "methods", None) or {"WS"}))))
    return found
