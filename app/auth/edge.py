"""The outermost layer of the app: which Host names are served, and the headers every response carries.

DNS rebinding: a page on attacker.test whose name later resolves to 127.0.0.1 is, to the browser, the same
origin as the dashboard, so it may read and write it. The one thing that still tells it apart is the Host
header the browser sends (attacker.test). So only names the dashboard is really reachable as are served:
loopback names, the bind address, the public_url host, settings.allowed_hosts; on a wildcard bind also any IP
literal (an address cannot be rebound, and it is how people reach a box on the LAN). Everything else gets 421
before any route, auth or not. `*` in allowed_hosts turns the check off, on purpose only.

Every response also refuses to be framed (clickjacking a one-click "start job" form) or content-sniffed.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
)


def host_name(value: str) -> str:
    """The name part of a Host header, lowercased, without port, brackets or a trailing dot ('' if odd)."""
    value = value.strip().lower()
    if not value or any(ch in value for ch in "/@\\ ?#"):
        return ""
    try:
        name = urlsplit(f"http://{value}").hostname or ""
    except ValueError:
        return ""
    return name.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def allowed_host_names(settings: Settings) -> frozenset[str]:
    """Names served besides IP literals on a wildcard bind: loopback, bind host, public_url, the setting."""
    names = set(LOOPBACK_NAMES)
    names.update(h for h in (host_name(h) for h in settings.allowed_hosts) if h)
    if "*" in settings.allowed_hosts:
        names.add("*")
    bind = host_name(settings.host) if settings.host not in WILDCARD_BINDS else ""
    if bind:
        names.add(bind)
    if settings.public_url:
        public = host_name(urlsplit(settings.public_url).netloc) if "://" in settings.public_url else ""
        if public:
            names.add(public)
    return frozenset(names)


def host_allowed(scope: Scope, settings: Settings, names: frozenset[str]) -> bool:
    """Is this request's Host one the dashboard is reachable as?"""
    if "*" in names:
        return True
    name = host_name(Headers(scope=scope).get("host", ""))
    if not name:
        return False
    if name in names:
        return True
    address = _ip(name)
    if address is None:
        return False
    if settings.host.strip("[]") in WILDCARD_BINDS:
        return True  # any of the machine's addresses; a literal address cannot be rebound
    server = scope.get("server")
    if not server:
        return False
    # the very address the connection arrived on (e.g. `uvicorn --host 0.0.0.0` without telling settings)
    return _ip(str(server[0]).strip("[]")) == address


class HostGuardMiddleware:
    """ASGI middleware: 421 for a Host the dashboard is not reachable as (DNS rebinding), before any route."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.names = allowed_host_names(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or host_allowed(scope, self.settings, self.names):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        shown = Headers(scope=scope).get("host", "")[:100]
        response = JSONResponse(
            {
                "detail": f"this dashboard does not answer to the host name {shown!r}; if that is how you "
                "reach it, add the name to TUNEBOARD_ALLOWED_HOSTS (comma-separated) or set "
                "TUNEBOARD_PUBLIC_URL to the address browsers use"
            },
            status_code=421,
        )
        await response(scope, receive, send)


class SecurityHeadersMiddleware:
    """ASGI middleware: no framing, no sniffing, same-origin referrers, on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
