"""DATA_DIR/auth.json: the dashboard password (argon2 hash), API tokens (sha256) and the session secret.

One small file instead of a table: the CLI (`tuneboard auth ...`) edits it while the server runs, the server
re-reads it when it changes, and it is written atomically with mode 0600. Plain secrets are never stored:
a token is printed once by `create_token` and only its sha256 is kept (a 256-bit random token needs no slow
hash); the password goes through argon2id.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = logging.getLogger(__name__)

AUTH_FILE = "auth.json"
TOKEN_PREFIX = "tb_"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_hasher = PasswordHasher()


class AuthError(Exception):
    """A refused auth change (bad name, short password, unknown token); the message says what to do."""


@dataclass(frozen=True)
class ApiToken:
    """A named API token: only its sha256 is stored."""

    name: str
    sha256: str
    created_at: str


@dataclass
class AuthState:
    """The contents of auth.json."""

    password_hash: str | None = None
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    tokens: list[ApiToken] = field(default_factory=list)
    # nonces of browser sessions ended by a logout, with the time (epoch s) their cookie would expire anyway
    revoked_sessions: dict[str, int] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        """True once a password or an API token exists (so the server may leave loopback)."""
        return bool(self.password_hash) or bool(self.tokens)

    def verify_password(self, password: str) -> bool:
        """Does `password` match the stored hash (False when no password is set)?"""
        if not self.password_hash or len(password) > MAX_PASSWORD_LENGTH:
            return False
        try:
            return _hasher.verify(self.password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def token_name(self, token: str) -> str | None:
        """The name of the API token `token`, or None when it is unknown or revoked."""
        digest = hash_api_token(token)
        found: str | None = None
        for t in self.tokens:  # compare every one: no early exit to time
            if hmac.compare_digest(digest, t.sha256):
                found = t.name
        return found

    def to_json(self) -> dict[str, Any]:
        """The file's JSON form."""
        return {
            "version": 1,
            "password_hash": self.password_hash,
            "session_secret": self.session_secret,
            "tokens": [{"name": t.name, "sha256": t.sha256, "created_at": t.created_at} for t in self.tokens],
            "revoked_sessions": dict(self.revoked_sessions),
        }

    @classmethod
    def from_json(cls, data: Any, *, source: Path) -> AuthState:
        """Parse the file's JSON form; AuthError naming the file when it is not ours."""
        if not isinstance(data, dict) or not isinstance(data.get("session_secret"), str):
            raise AuthError(f"{source} is not a Tuneboard auth file; move it away and set the password again")
        tokens = []
        for item in data.get("tokens") or []:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("name"), str) and isinstance(item.get("sha256"), str):
                tokens.append(ApiToken(item["name"], item["sha256"], str(item.get("created_at", ""))))
        password_hash = data.get("password_hash")
        revoked = data.get("revoked_sessions")
        return cls(
            password_hash=password_hash if isinstance(password_hash, str) else None,
            session_secret=data["session_secret"],
            tokens=tokens,
            revoked_sessions={
                str(k): int(v)
                for k, v in (revoked if isinstance(revoked, dict) else {}).items()
                if isinstance(v, int | float)
            },
        )


def hash_api_token(token: str) -> str:
    """sha256 hex of an API token (what auth.json stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def auth_path(data_dir: Path) -> Path:
    """Where the auth file of a data dir lives."""
    return Path(data_dir) / AUTH_FILE


def load_auth(data_dir: Path) -> AuthState:
    """The auth state of `data_dir` (empty, with a fresh secret, when there is no file yet)."""
    path = auth_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AuthState()
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror}; check its owner and permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise AuthError(f"{path} is not valid JSON; move it away and set the password again") from None
    return AuthState.from_json(data, source=path)


def save_auth(data_dir: Path, state: AuthState) -> None:
    """Write auth.json atomically with mode 0600 (readers see the old or the new file, never half)."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".auth-", suffix=".json", dir=directory)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state.to_json(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, auth_path(directory))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def auth_configured(data_dir: Path) -> bool:
    """True when `data_dir` has a password or an API token."""
    return load_auth(data_dir).configured


def set_password(data_dir: Path, password: str) -> None:
    """Store a new dashboard password; also rotates the session secret, which logs every browser out."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AuthError(f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters")
    state = load_auth(data_dir)
    state.password_hash = _hasher.hash(password)
    state.session_secret = secrets.token_urlsafe(32)
    save_auth(data_dir, state)


def create_token(data_dir: Path, name: str) -> str:
    """Create the API token `name` and return it (the only time the plain token exists)."""
    if not _TOKEN_NAME.match(name):
        raise AuthError(
            f"invalid token name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    state = load_auth(data_dir)
    if any(t.name == name for t in state.tokens):
        raise AuthError(f"a token named {name!r} exists already; revoke it first or pick another name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    state.tokens.append(ApiToken(name=name, sha256=hash_api_token(token), created_at=created))
    save_auth(data_dir, state)
    return token


def list_tokens(data_dir: Path) -> list[ApiToken]:
    """The API tokens (names and creation times; hashes only)."""
    return list(load_auth(data_dir).tokens)


def revoke_token(data_dir: Path, name: str) -> None:
    """Delete the API token `name` (requests using it are refused from then on)."""
    state = load_auth(data_dir)
    kept = [t for t in state.tokens if t.name != name]
    if len(kept) == len(state.tokens):
        known = ", ".join(t.name for t in state.tokens) or "none"
        raise AuthError(f"no token named {name!r}; existing tokens: {known}")
    state.tokens = kept
    save_auth(data_dir, state)


MAX_REVOKED_SESSIONS = 10_000


def revoke_session(data_dir: Path, nonce: str, expires_at: float, *, now: float | None = None) -> None:
    """Record a logged-out session's nonce until its cookie would have expired anyway (then it is dropped)."""
    now = time.time() if now is None else now
    state = load_auth(data_dir)
    kept = {k: v for k, v in state.revoked_sessions.items() if v > now}
    kept[nonce] = int(expires_at) + 1
    if len(kept) > MAX_REVOKED_SESSIONS:  # bounded file: the ones closest to expiring go first
        kept = dict(sorted(kept.items(), key=lambda kv: kv[1])[-MAX_REVOKED_SESSIONS:])
    state.revoked_sessions = kept
    save_auth(data_dir, state)


class AuthCache:
    """The server's view of auth.json, re-read whenever the file changes (the CLI edits it live)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = auth_path(data_dir)
        self.data_dir = Path(data_dir)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._state = AuthState()
        self._warned_mode = False

    def current(self) -> AuthState:
        """The current state (one stat per call; a re-read only after a change)."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            stamp = None
            st = None
        with self._lock:
            if stamp != self._stamp:
                if stamp is None:
                    # no file: nothing configured; keep one secret for the process's lifetime
                    self._state = AuthState(session_secret=self._state.session_secret)
                else:
                    self._state = load_auth(self.data_dir)
                    if st is not None and st.st_mode & 0o077 and not self._warned_mode:
                        self._warned_mode = True
                        log.warning("%s is readable by other users; run: chmod 600 %s", self.path, self.path)
                self._stamp = stamp
            return self._state


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (the only binds allowed without auth)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
