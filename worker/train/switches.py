"""The on / off / auto environment switches that override the worker's training levers.

Each lever (activation offload, host-kept lookup tables, compiled layers) decides its own default; an
environment variable can force it either way, for benchmarks and for users working around a problem.
"""

from __future__ import annotations

import os

_ON = ("1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")


def env_switch(name: str) -> bool | None:
    """True / False when the variable `name` forces the lever on / off; None when unset or "auto".

    Anything else is refused with a message naming the variable, rather than silently read as "auto".
    """
    value = os.environ.get(name, "auto").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value not in ("", "auto"):
        raise ValueError(f"{name}={value!r} is not understood; set it to 0, 1 or auto")
    return None


def lever_on(name: str, default: bool) -> bool:
    """The lever's state: forced by the variable `name` when it says so, else `default`."""
    forced = env_switch(name)
    return default if forced is None else forced
