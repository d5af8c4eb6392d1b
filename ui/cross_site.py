"""Cross-site request forgery: a page of another site can make a visitor's browser send a form
or a fetch here, and the browser adds the credentials it keeps for this server (HTTP Basic, the
session cookie). Browsers say which site a request comes from (Origin, Sec-Fetch-Site), so
state-changing requests from any site but this server and the ones its owner trusts are refused.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import urlsplit

from starlette.types import Scope

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class OriginPolicy:
    """Which sites may make a visitor's browser change something here: this server itself and the
    --cors-allow-origins entries (or regex). Requests without an Origin (scripts, API clients)
    are not a browser acting for another site and pass."""

    def __init__(self, allowed: Iterable[str] = (), regex: str | None = None):
        self.allowed = {origin.rstrip("/").lower() for origin in allowed}
        self.regex = re.compile(regex) if regex else None

    def cross_site_origin(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        """The foreign origin of a state-changing request (every method but GET, HEAD and
        OPTIONS, and every websocket) to refuse, or None."""
        if scope["type"] == "http" and scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is None:
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
            return f"another site ({site})" if site in ("cross-site", "same-site") else None
        text = origin.decode("latin-1").strip()
        if self._trusted(text) or is_same_origin(text, headers):
            return None
        return text[:200] or "an unnamed origin"

    def _trusted(self, origin: str) -> bool:
        if "*" in self.allowed or origin.rstrip("/").lower() in self.allowed:
            return True
        return bool(self.regex and self.regex.fullmatch(origin))


def is_same_origin(origin: str, headers: dict[bytes, bytes]) -> bool:
    """Whether `origin` (scheme://host[:port]) names the host the request was sent to (its Host
    header, or the X-Forwarded-Host a reverse proxy set). "null" (a sandboxed page, a file) never
    does."""
    try:
        parts = urlsplit(origin)
        wanted = (parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme))
    except ValueError:
        return False
    if not parts.hostname:
        return False
    for name in (b"host", b"x-forwarded-host"):
        value = headers.get(name)
        if value and _host_and_port(value.decode("latin-1").split(",")[0].strip(), parts.scheme) == wanted:
            return True
    return False


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_and_port(host: str, scheme: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(f"//{host}")
        return parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None, None
