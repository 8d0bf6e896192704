"""Who may use the dashboard: a password for browsers, API tokens for scripts, cross-site request refusal.

Off by default on a loopback bind; required (and checked at start-up) for any other bind.
"""

from __future__ import annotations

from app.auth.store import AuthCache, is_loopback
from app.settings import Settings


class UnprotectedBindError(RuntimeError):
    """Serving beyond loopback without a password or token."""


def refuse_unprotected_bind(settings: Settings, cache: AuthCache | None = None) -> None:
    """Raise UnprotectedBindError when settings.host is not loopback and no password or API token exists."""
    if is_loopback(settings.host):
        return
    state = (cache or AuthCache(settings.data_dir)).current()
    if not state.configured:
        raise UnprotectedBindError(
            f"binding to {settings.host} needs auth, which is not configured: set a password with "
            "`tuneboard auth set-password` (and API tokens for scripts with "
            "`tuneboard auth create-token NAME`), "
            "or serve on 127.0.0.1 and reach it through an SSH tunnel"
        )
