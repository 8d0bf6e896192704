"""Who may call what: login/API-token checks and cross-site request refusal, for every route in one place.

Auth is on when auth.json holds a password or a token, or when settings.auth_required says so. Then every
page and API route needs a session cookie (from /login) or `Authorization: Bearer <api token>`, except the
health check, static files, the login page itself, and the worker routes (event ingest, artifact uploads),
which check the job's own token.

Cross-site requests: a state-changing request (POST/PUT/PATCH/DELETE) without an Authorization header is
refused when the browser says it comes from another site (Origin, or Referer without Origin, of another
origin; or Sec-Fetch-Site: cross-site). Browsers cannot attach an Authorization header cross-site without a
CORS preflight, which this app never grants, so bearer requests are exempt. This holds with auth off too: a
page on another site must not be able to start jobs on a dashboard listening on localhost. No form needs a
hidden token field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.sessions import SESSION_COOKIE, session_parts, session_valid
from app.auth.store import AuthCache, AuthError, AuthState
from app.settings import Settings

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# reachable without logging in
_OPEN_PATHS = frozenset({"/api/health", "/login", "/logout"})
_OPEN_PREFIXES = ("/static/",)
# worker routes authenticate with the job's own token (app.metrics.ingest.authorize), not a login
WORKER_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("POST", re.compile(r"^/api/jobs/[^/]+/events/?$")),  # event ingest (app/metrics/api.py)
    ("PUT", re.compile(r"^/api/jobs/[^/]+/artifacts/.+$")),  # remote uploads (app/scheduler/uploads.py)
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# GETs that start work (a process, a model load, an archive): a page on another site must not be able to set
# them off with an <img> or a link, so they get the same cross-site refusal as writes
WORK_GETS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^/api/jobs/[^/]+/try/?$"),  # try the adapter: loads the model in a new process
    re.compile(r"^/api/datasets/[^/]+/preview/?$"),  # tokenizer subprocess
    re.compile(r"^/datasets/[^/]+/partials/preview/?$"),
    re.compile(r"^/api/jobs/[^/]+/(adapter|merged\.zip|checkpoints/[^/]+\.zip)/?$"),  # builds an archive
)


@dataclass(frozen=True)
class Principal:
    """Who made a request: a browser session or a named API token."""

    kind: str  # "session" | "token"
    name: str


def _origin_tuple(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL's origin, with the default port filled in; None if unparsable."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not host or port is None:
        return None
    return scheme.lower(), host, port


def _url_origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return _origin_tuple(parts.scheme.lower(), parts.netloc)


def own_origins(scope: Scope, headers: Headers, settings: Settings) -> set[tuple[str, str, int]]:
    """The origins this request may come from: the Host it was sent to (with the scheme it arrived
    over, or the one a proxy names in X-Forwarded-Proto), and settings.public_url."""
    origins: set[tuple[str, str, int]] = set()
    host = headers.get("host")
    if host:
        schemes = {str(scope.get("scheme", "http"))}
        forwarded = headers.get("x-forwarded-proto")
        if forwarded and settings.trusted_proxies:  # anyone can send the header; only a proxy is believed
            schemes.add(forwarded.split(",")[0].strip().lower())
        for scheme in schemes:
            origin = _origin_tuple(scheme, host)
            if origin is not None:
                origins.add(origin)
    if settings.public_url:
        origin = _url_origin(settings.public_url)
        if origin is not None:
            origins.add(origin)
    return origins


def cross_site_reason(scope: Scope, headers: Headers, settings: Settings) -> str | None:
    """Why a browser request looks cross-site, or None when it is same-origin (or not from a browser)."""
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "the browser marked it Sec-Fetch-Site: cross-site"
    origin_header = headers.get("origin")
    if origin_header is not None:
        origin = _url_origin(origin_header) if origin_header != "null" else None
        if origin is None or origin not in own_origins(scope, headers, settings):
            return f"its Origin {origin_header[:100]!r} is not this dashboard's"
        return None
    referer = headers.get("referer")
    if referer:
        origin = _url_origin(referer)
        if origin is None or origin not in own_origins(scope, headers, settings):
            return "its Referer is another site"
    return None


def is_work_get(method: str, path: str) -> bool:
    """GETs that start a process or build an archive (WORK_GETS)."""
    return method in ("GET", "HEAD") and any(pattern.match(path) for pattern in WORK_GETS)


def work_get_refusal(scope: Scope, headers: Headers, settings: Settings) -> str | None:
    """Why a GET that starts work is refused (None: it comes from the dashboard itself, or not a browser)."""
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):  # same-site: another port or subdomain, still another origin
        return f"the browser marked it Sec-Fetch-Site: {site}"
    return cross_site_reason(scope, headers, settings)


def reached_over_the_network(scope: Scope) -> bool:
    """True when the request came in on a non-loopback local address (the app listens beyond loopback)."""
    server = scope.get("server")
    if not server:
        return False
    try:
        address = ipaddress.ip_address(str(server[0]).strip("[]"))
    except ValueError:
        return False  # a name, not an address (test clients, unix sockets): nothing to judge
    return not address.is_loopback


def _bearer(headers: Headers) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _cookie(headers: Headers, name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is just "no session"
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def is_worker_route(method: str, path: str) -> bool:
    """Routes a training process calls with its per-job token (ingest, artifact uploads)."""
    return any(method == m and pattern.match(path) is not None for m, pattern in WORKER_ROUTES)


def is_open_path(method: str, path: str) -> bool:
    """Routes that need no login: health, static files, login/logout, the worker routes."""
    if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return True
    return is_worker_route(method, path)


def _wants_json(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path == "/openapi.json"


class AuthMiddleware:
    """ASGI middleware: refuses cross-site writes, then requires a session or an API token when auth is on."""

    def __init__(self, app: ASGIApp, settings: Settings, cache: AuthCache | None = None) -> None:
        self.app = app
        self.settings = settings
        self.cache = cache or AuthCache(settings.data_dir)

    def auth_required(self) -> bool:
        """Is auth on right now (auth.json configured, or forced by settings.auth_required)?"""
        return self.settings.auth_required or self.cache.current().configured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self.check(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> Response | None:
        """None to let the request through (with scope["state"]["principal"] set), else the refusal."""
        headers = Headers(scope=scope)
        method = str(scope["method"]).upper()
        path = str(scope["path"])
        bearer = _bearer(headers)

        if is_work_get(method, path) and bearer is None:
            reason = work_get_refusal(scope, headers, self.settings)
            if reason is not None:
                return JSONResponse(
                    {
                        "detail": f"refused a cross-site GET that starts work: {reason}. Open it from the "
                        "dashboard's own pages, or send an API token (Authorization: Bearer ...) from scripts"
                    },
                    status_code=403,
                )
        if method in UNSAFE_METHODS and bearer is None:
            reason = cross_site_reason(scope, headers, self.settings)
            if reason is not None:
                return JSONResponse(
                    {
                        "detail": f"refused a cross-site {method} request: {reason}. Use the dashboard's own "
                        "pages, or send an API token (Authorization: Bearer ...) from scripts"
                    },
                    status_code=403,
                )

        try:
            state = self.cache.current()
        except AuthError as exc:
            return JSONResponse({"detail": f"auth is misconfigured: {exc}"}, status_code=500)
        required = self.settings.auth_required or state.configured
        principal: Principal | None = None
        open_path = is_open_path(method, path)
        if not required and reached_over_the_network(scope) and not open_path:
            # started some other way than `tuneboard serve` (e.g. uvicorn --host 0.0.0.0): still no open door
            return JSONResponse(
                {
                    "detail": "this dashboard has no password or API token, so it answers only on loopback; "
                    "set one with `tuneboard auth set-password` (or reach it through an SSH tunnel)"
                },
                status_code=403,
            )
        if bearer is not None and not is_worker_route(method, path):
            name = state.token_name(bearer) if bearer else None
            if name is not None:
                principal = Principal("token", name)
            elif required and not open_path:
                return _unauthorized(
                    "invalid or revoked API token; create one on the server with "
                    "`tuneboard auth create-token NAME` and send it as 'Authorization: Bearer <token>'"
                )
        if principal is None and valid_session_cookie(headers, state, self.settings):
            principal = Principal("session", "browser")
        scope.setdefault("state", {})["principal"] = principal
        if not required or principal is not None or open_path:
            return None
        return self._login_needed(scope, headers, method, path)

    def _login_needed(self, scope: Scope, headers: Headers, method: str, path: str) -> Response:
        if _wants_json(path):
            return _unauthorized(
                "authentication required: log in at /login, or send 'Authorization: Bearer <api token>' "
                "(create one on the server with `tuneboard auth create-token NAME`)"
            )
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        login = "/login?next=" + quote(target, safe="")
        if headers.get("hx-request") == "true":
            # htmx follows HX-Redirect with a full page load (a 3xx would be followed inside the fragment)
            return Response("log in first", status_code=401, headers={"HX-Redirect": login})
        if method in ("GET", "HEAD"):
            return RedirectResponse(login, status_code=303)
        return _unauthorized("authentication required: log in at /login first")


def valid_session_cookie(headers: Headers, state: AuthState, settings: Settings) -> bool:
    """Does the request carry a session cookie that is signed, unexpired and not logged out?"""
    cookie = _cookie(headers, SESSION_COOKIE)
    if not cookie or not session_valid(state.session_secret, cookie, max_age_s=settings.session_max_age_s):
        return False
    parts = session_parts(cookie)
    return parts is not None and parts[1] not in state.revoked_sessions


def principal_still_valid(request: Request) -> bool:
    """Would this request still be let in now? Long streams ask this, so a revoked token or a logged-out
    session does not keep one open (auth.json is re-read when it changes)."""
    settings: Settings = request.app.state.settings
    cache = getattr(request.app.state, "auth_cache", None)
    if cache is None:
        return True
    try:
        state = cache.current()
    except AuthError:
        return False
    if not (settings.auth_required or state.configured):
        return True
    principal = request_principal(request.scope)
    if principal is None:
        return False  # auth was switched on after this request was let in
    headers = Headers(scope=request.scope)
    if principal.kind == "token":
        bearer = _bearer(headers)
        return bool(bearer) and state.token_name(bearer or "") == principal.name
    return valid_session_cookie(headers, state, settings)


def may_see_details(request: Request) -> bool:
    """May this request see job ids and process ids in /api/health (a logged-in principal, or the open
    loopback dashboard)?"""
    if request_principal(request.scope) is not None:
        return True
    settings: Settings = request.app.state.settings
    cache = getattr(request.app.state, "auth_cache", None)
    try:
        configured = cache.current().configured if cache is not None else False
    except AuthError:
        return False
    return not (settings.auth_required or configured) and not reached_over_the_network(request.scope)


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def request_principal(scope: MutableMapping[str, Any]) -> Principal | None:
    """The Principal the middleware attached to a request (None: anonymous, or auth is off)."""
    state = scope.get("state") or {}
    principal = state.get("principal")
    return principal if isinstance(principal, Principal) else None
