"""Who may reach what, for a server shared on a LAN.

Gradio's login covers only Gradio's own routes, and not all of those (its monitoring and heartbeat
routes, for example). So one guard in front of the whole app decides for every request: with
--gradio-auth, nothing but the login page and the static files it needs answers without a login
(a Gradio session cookie, or HTTP Basic credentials for scripts). The API routes check their own
HTTP Basic credentials too (ui/server.py); --api-auth gives them separate logins, and then UI
logins do not open the API nor API logins the UI.

The guard also throttles password guessing (ui/login_throttle.py) on every login it checks, the
login form's included, and refuses state-changing requests that a web page on another site makes
a visitor's browser send (cross-site request forgery): browsers keep HTTP Basic credentials and
session cookies and send them with a form another site posts here.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Callable, Iterable

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .asgi_bodies import read_at_most, replay
from .cross_site import OriginPolicy
from .login_page import login_page_html
from .login_throttle import LoginThrottle, too_many_message

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
# Where a person browses to with a login prompt of the browser's own (the API's docs page): only
# here does a 401 ask the browser for credentials. Elsewhere it would make the browser keep them
# and send them along with any other site's forms.
BROWSER_PROMPT_PATHS = frozenset({"/docs"})
DOCS_PATHS = frozenset({"/docs", "/openapi.json", "/docs/oauth2-redirect"})
LOGIN_FORM_BYTES = 64 * 1024  # a user name and a password; more is not a login


class Throttled(Exception):
    def __init__(self, seconds: int):
        super().__init__(seconds)
        self.seconds = seconds


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
    websocket) that carries neither a valid Gradio session nor valid HTTP Basic credentials;
    throttle failed logins; refuse cross-site state changes."""

    def __init__(self, app: ASGIApp, ui_logins: Logins | None, api_logins: Logins | None,
                 gradio_app: Callable[[], object | None], local_only: bool = False,
                 allowed_origins: Iterable[str] = (), allowed_origin_regex: str | None = None,
                 throttle: LoginThrottle | None = None):
        self.app = app
        # Not shared on the network: answer only to requests addressed to this machine by a
        # loopback name, so a web page whose domain re-resolves to 127.0.0.1 (DNS rebinding)
        # cannot drive the UI, install extensions or read outputs.
        self.local_only = local_only
        self.ui_logins = ui_logins or []
        self.api_logins = api_logins or []
        self.gradio_app = gradio_app  # found after mounting; holds the session tokens
        self.origins = OriginPolicy(allowed_origins, allowed_origin_regex)
        self.throttle = throttle or LoginThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.local_only and not is_loopback_host(headers.get(b"host")):
            await _refuse(scope, receive, send, 403, "This server answers only to localhost addresses; "
                          "start it with --listen to share it on the network")
            return
        foreign = self.origins.cross_site_origin(scope, headers)
        if foreign is not None:
            await _refuse(scope, receive, send, 403, f"Cross-site request refused: a page of {foreign} may not "
                          "change anything here (start with --cors-allow-origins to allow a site you trust)")
            return
        path = route_path(scope)
        if self.ui_logins and scope["type"] == "http" and path in ("/login", "/login/") and \
                scope["method"] == "POST":
            await self._login_form(scope, receive, send)
            return
        try:
            allowed = self._allowed(scope, path, headers)
        except Throttled as throttled:
            await _refuse(scope, receive, send, 429, too_many_message(throttled.seconds),
                          {"Retry-After": str(throttled.seconds)})
            return
        if not allowed:
            prompt = {"WWW-Authenticate": 'Basic realm="SD Studio"'} if path in BROWSER_PROMPT_PATHS else None
            await _refuse(scope, receive, send, 401, "Log in first", prompt, error="Unauthorized")
            return
        if self.ui_logins and scope["type"] == "http" and path == "/" and scope["method"] in ("GET", "HEAD") \
                and not self._has_session(headers):
            # Our login page rather than Gradio's: it can say how long a throttled login must wait.
            await HTMLResponse(login_page_html())(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope, path: str, headers: dict[bytes, bytes]) -> bool:
        if path.startswith(INTERNAL_PREFIX) and self.ui_logins and self._has_session(headers):
            return True
        if path.startswith(API_PREFIXES + (INTERNAL_PREFIX,)):
            # The API's logins (the UI's when --api-auth is not given), over HTTP Basic. The API
            # routes check again themselves; this also covers any path under these prefixes that
            # no API route answers.
            api_logins = self.api_logins or self.ui_logins
            return not api_logins or self._basic_login(scope, headers, api_logins, "API")
        if path in DOCS_PATHS and self.api_logins:
            # The API's documentation: for API users, and for UI users where the UI has logins.
            if self.ui_logins and self._has_session(headers):
                return True
            return self._basic_login(scope, headers, self.api_logins + self.ui_logins, "API docs")
        if not self.ui_logins:
            return True  # the UI is open by the owner's choice
        if is_public(path):
            return True
        if basic_credentials(headers) is not None:
            return self._basic_login(scope, headers, self.ui_logins, "UI")
        return self._has_session(headers)

    def _basic_login(self, scope: Scope, headers: dict[bytes, bytes], logins: Logins, where: str) -> bool:
        """Whether the request's HTTP Basic credentials are one of `logins`; raises Throttled
        while this address must wait. Credentials that are right for the other set of logins
        (UI for API or the reverse) are refused without counting as a guess."""
        login = basic_credentials(headers)
        if login is None:
            return False
        address = client_address(scope)
        wait = self.throttle.retry_after(address, login[0])
        if wait:
            raise Throttled(wait)
        if check_credentials(logins, *login):
            self.throttle.succeeded(address, login[0])
            return True
        if not check_credentials(self.ui_logins + self.api_logins, *login):
            self.throttle.failed(address, login[0], f"HTTP Basic, {where}")
        return False

    async def _login_form(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's login route, throttled: the form is read here (to learn the user name) and
        handed on unchanged; Gradio's answer says whether the login succeeded."""
        body = await read_at_most(receive, LOGIN_FORM_BYTES)
        if body is None:
            await _refuse(scope, receive, send, 413, f"A login form is at most {LOGIN_FORM_BYTES // 1024} KiB")
            return
        user, password = await _form_login(scope, body)
        address = client_address(scope)
        wait = self.throttle.retry_after(address, user)
        if wait:
            await _refuse(scope, receive, send, 429, too_many_message(wait), {"Retry-After": str(wait)})
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, replay(body), watch)
        if status and status[0] == 200:
            self.throttle.succeeded(address, user)
        elif status and status[0] in (400, 401) and \
                not (user is not None and check_credentials(self.api_logins, user, password or "")):
            self.throttle.failed(address, user, "login form")

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


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None, error: str | None = None) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    names = {401: "Unauthorized", 403: "Forbidden", 413: "Payload Too Large", 429: "Too Many Requests"}
    await JSONResponse({"error": error or names.get(status, "Error"), "detail": detail}, status_code=status,
                       headers=headers)(scope, receive, send)


async def _form_login(scope: Scope, body: bytes) -> tuple[str | None, str | None]:
    """(user name, password) of a login form, None where the form has none."""
    try:
        form = await Request(scope, replay(body)).form()
    except Exception:  # noqa: BLE001 - a form that cannot be parsed is Gradio's to refuse
        return None, None
    user, password = form.get("username"), form.get("password")
    return (user.strip() if isinstance(user, str) else None), (password if isinstance(password, str) else None)


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
