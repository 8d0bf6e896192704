"""The login page, logging in (sets the session cookie) and logging out."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.auth.middleware import request_principal
from app.auth.sessions import SESSION_COOKIE, make_session
from app.auth.store import AuthCache

router = APIRouter(tags=["auth"], include_in_schema=False)
log = logging.getLogger(__name__)

# a password guesser gets this many tries per client address and window
MAX_FAILURES = 10
FAILURE_WINDOW_S = 300.0


class LoginThrottle:
    """Counts failed logins per client address; refuses more than MAX_FAILURES in FAILURE_WINDOW_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._failures.get(client)
            if not recent:
                return 0.0
            while recent and now - recent[0] > FAILURE_WINDOW_S:
                recent.popleft()
            if len(recent) < MAX_FAILURES:
                return 0.0
            return FAILURE_WINDOW_S - (now - recent[0])

    def failed(self, client: str) -> None:
        """Record a failed attempt."""
        with self._lock:
            self._failures.setdefault(client, deque(maxlen=MAX_FAILURES)).append(time.monotonic())
            if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
                self._failures.pop(next(iter(self._failures)))

    def succeeded(self, client: str) -> None:
        """Forget a client's failures."""
        with self._lock:
            self._failures.pop(client, None)


def safe_next(target: Any) -> str:
    """A local path to go to after login; anything else (other sites, //host, odd schemes) becomes /."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ch in target for ch in "\r\n\\") or len(target) > 2000:
        return "/"
    if target.startswith(("/login", "/logout")):
        return "/"
    return target


def _auth_cache(request: Request) -> AuthCache:
    cache = getattr(request.app.state, "auth_cache", None)
    if cache is None:
        cache = AuthCache(request.app.state.settings.data_dir)
        request.app.state.auth_cache = cache
    return cache


def _throttle(request: Request) -> LoginThrottle:
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = LoginThrottle()
        request.app.state.login_throttle = throttle
    return throttle


def _render(request: Request, *, next_url: str, error: str | None, status_code: int = 200) -> HTMLResponse:
    from app.pages import templates

    state = _auth_cache(request).current()
    context = {"next_url": next_url, "error": error, "password_set": bool(state.password_hash)}
    return templates.TemplateResponse(request, "login.html", context, status_code=status_code)


def _is_https(request: Request) -> bool:
    public_url = request.app.state.settings.public_url or ""
    return request.url.scheme == "https" or public_url.startswith("https://")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    """The login form (a logged-in browser goes straight on)."""
    next_url = safe_next(request.query_params.get("next", "/"))
    principal = request_principal(request.scope)
    if principal is not None and principal.kind == "session":
        return RedirectResponse(next_url, status_code=303)
    return _render(request, next_url=next_url, error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the password; on success set the session cookie and go to `next`."""
    form = await request.form()
    password = form.get("password")
    next_url = safe_next(form.get("next", "/"))
    client = request.client.host if request.client else "unknown"
    throttle = _throttle(request)
    wait = throttle.retry_after(client)
    if wait > 0:
        return _render(
            request,
            next_url=next_url,
            error=f"Too many failed attempts. Try again in {int(wait) + 1} seconds.",
            status_code=429,
        )
    state = _auth_cache(request).current()
    if not state.password_hash:
        return _render(
            request,
            next_url=next_url,
            error="No password is set. On the server, run: tuneboard auth set-password",
            status_code=401,
        )
    import anyio

    # argon2 takes tens of milliseconds of CPU on purpose: keep it off the event loop
    ok = isinstance(password, str) and await anyio.to_thread.run_sync(state.verify_password, password)
    if not ok:
        throttle.failed(client)
        log.warning("failed dashboard login from %s", client)  # never the password itself
        return _render(request, next_url=next_url, error="Wrong password.", status_code=401)
    throttle.succeeded(client)
    settings = request.app.state.settings
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        make_session(state.session_secret),
        max_age=int(settings.session_max_age_s),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_is_https(request),
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Forget the session cookie and go to the login page."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_is_https(request))
    return response
