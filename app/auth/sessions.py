"""Signed browser-session cookies: `<issued_at>.<nonce>.<hmac>` keyed by auth.json's session secret.

No session table: setting a new password rotates the secret, which ends every session at once; a logout
records that one session's nonce in auth.json (revoked_sessions) until the cookie would have expired, so a
copied cookie stops working too; otherwise a session ends after settings.session_max_age_s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

SESSION_COOKIE = "tuneboard_session"


def _signature(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def make_session(secret: str, *, now: float | None = None) -> str:
    """A new signed session value."""
    issued = int(now if now is not None else time.time())
    payload = f"{issued}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_signature(secret, payload)}"


def session_valid(secret: str, value: str, *, max_age_s: float, now: float | None = None) -> bool:
    """True when `value` was signed with `secret` and is younger than `max_age_s`."""
    if len(value) > 256:
        return False
    payload, _, signature = value.rpartition(".")
    issued_text, _, _nonce = payload.partition(".")
    if not issued_text.isdigit() or not signature:
        return False
    if not hmac.compare_digest(_signature(secret, payload), signature):
        return False
    age = (now if now is not None else time.time()) - int(issued_text)
    return -60 <= age <= max_age_s  # a little clock skew between workers of one deployment is fine


def session_parts(value: str) -> tuple[int, str] | None:
    """(issued_at, nonce) of a session value, unchecked; None when it does not look like one."""
    payload, _, _signature_part = value.rpartition(".")
    issued_text, _, nonce = payload.partition(".")
    if not issued_text.isdigit() or not nonce:
        return None
    return int(issued_text), nonce
