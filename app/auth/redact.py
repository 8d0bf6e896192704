"""Mask secrets in text the dashboard shows: logs, configs as submitted, failure reasons.

Nothing in a job config is meant to hold a secret (hub credentials come from the environment of
`tuneboard serve`), but people paste URLs with passwords and workers print tracebacks that include
environment values. This masks the obvious shapes and the exact values of secret-named environment
variables of this process, before anything reaches a page or an API answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_SECRET_ENV_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY")
_MIN_ENV_SECRET = 8  # shorter values would mask ordinary words

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host → scheme://user:***@host
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)"), r"\g<keep>" + MASK),
    # Hugging Face user/org tokens, Tuneboard API tokens
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_" + MASK),
    (re.compile(r"\btb_[A-Za-z0-9_-]{16,}"), "tb_" + MASK),
    # Authorization headers
    (
        re.compile(r"(?P<keep>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
        r"\g<keep>" + MASK,
    ),
    # token=..., "password": "...", api_key: ...
    (
        re.compile(
            r"(?P<keep>\b[\w-]*(?:token|password|passwd|secret(?:[_-]?key)?|api[_-]?key|access[_-]?key)"
            r"(?![\w-])[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}]{6,})",
            re.IGNORECASE,
        ),
        r"\g<keep>" + MASK,
    ),
)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of this process's environment variables whose names say they are secrets (longest first)."""
    env = os.environ if environ is None else environ
    values = {
        value
        for key, value in env.items()
        if any(word in key.upper() for word in _SECRET_ENV_WORDS) and len(value) >= _MIN_ENV_SECRET
    }
    return sorted(values, key=len, reverse=True)


def redact_secrets(text: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """`text` with secret-looking parts replaced by ***; None stays None."""
    if not text:
        return text
    for value in secret_env_values(environ):
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(data: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of JSON-like data with every string passed through redact_secrets."""
    if isinstance(data, str):
        return redact_secrets(data, environ)
    if isinstance(data, dict):
        return {key: redact_data(value, environ) for key, value in data.items()}
    if isinstance(data, list):
        return [redact_data(value, environ) for value in data]
    return data
