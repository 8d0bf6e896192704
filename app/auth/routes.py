"""The login page, logging in (sets the session cookie) and logging out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.auth.middleware import request_principal, valid_session_cookie
from app.auth.sessions import SESSION_COOKIE, make_session, session_parts
from app.auth.store import AuthCache, revoke_session

router = APIRouter(tags=["auth"], include_in_schema=False)
log = logging.getLogger(__name__)

# One password account, one throttle: keyed on the account, not the client address, so neither a forged
# X-Forwarded-For nor many addresses buy extra guesses, and users behind one `ssh -L` are not locked out by
# each other for long. The first MAX_FAILURES failures are free; each one after that makes the next attempt
# wait twice as long (1, 2, 4 ... seconds), never more than MAX_DELAY_S: a guesser gets about one try per
# MAX_DELAY_S, the owner waits at most that long. The count is forgotten after a success, or after
# FORGET_AFTER_S without failures.
MAX_FAILURES = 5
MAX_DELAY_S = 30.0
FORGET_AFTER_S = 900.0


def failure_delay(failures: int) -> float:
    """Seconds the next attempt waits after `failures` failures in a row."""
    if failures < MAX_FAILURES:
        return 0.0
    return min(MAX_DELAY_S, 2.0 ** (failures - MAX_FAILURES))


class LoginThrottle:
    """Failed logins of the dashboard account, and when the next attempt may be made."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._last_failure = 0.0
        self._next_allowed = 0.0

    def _forget_if_quiet(self, now: float) -> None:
        if self._failures and now - self._last_failure > FORGET_AFTER_S:
            self._failures, self._next_allowed = 0, 0.0

    def retry_after(self) -> float:
        """Seconds until the next attempt may be made (0: now)."""
        with self._lock:
            now = self._clock()
            self._forget_if_quiet(now)
            return max(0.0, self._next_allowed - now)

    def begin(self) -> float:
        """Claim an attempt: 0 to go ahead (later ones wait as if it failed), else the seconds to wait."""
        with self._lock:
            now = self._clock()
            self._forget_if_quiet(now)
            if now < self._next_allowed:
                return self._next_allowed - now
            # reserve: guesses sent in parallel must not all slip in before the first one is judged
            self._next_allowed = now + failure_delay(self._failures + 1)
            return 0.0

    def failed(self) -> None:
        """Record a failed attempt."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            self._last_failure = now
            self._next_allowed = max(self._next_allowed, now + failure_delay(self._failures))

    def succeeded(self) -> None:
        """The right password: forget the failures."""
        with self._lock:
            self._failures, self._next_allowed = 0, 0.0


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
    from app.templating import templates

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
    client = request.client.host if request.client else "unknown"  # for the log only
    throttle = _throttle(request)
    wait = throttle.begin()
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
        throttle.failed()
        log.warning("failed dashboard login from %s", client)  # never the password itself
        return _render(request, next_url=next_url, error="Wrong password.", status_code=401)
    throttle.succeeded()
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
    """End this browser's session (a copy of its cookie stops working too) and go to the login page."""
    cache = _auth_cache(request)
    settings = request.app.state.settings
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and valid_session_cookie(request.headers, cache.current(), settings):
        parts = session_parts(cookie)
        if parts is not None:
            issued, nonce = parts
            revoke_session(cache.data_dir, nonce, issued + settings.session_max_age_s)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_is_https(request))
    return response
