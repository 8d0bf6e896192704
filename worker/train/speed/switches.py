"""The on / off / auto settings of the speed levers (the `speed:` config section and training.torch_compile).

Each lever (activation offload, host-kept lookup tables, compiled layers, ...) decides its own default for
the device and the run; the job's config can force it either way. Environment variables play no part: one
variable set on a server would otherwise change every job it launches, unrecorded.
"""

from __future__ import annotations

_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


def forced(setting: str) -> bool | None:
    """True / False when `setting` forces the lever on / off; None for "auto".

    Anything else is refused (the config schema only lets on / off / auto through; this guards callers).
    """
    value = setting.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value not in ("", "auto"):
        raise ValueError(f"lever setting {setting!r} is not understood; use on, off or auto")
    return None


def lever_on(setting: str, default: bool) -> bool:
    """The lever's state: `setting` when it forces one, else `default`."""
    chosen = forced(setting)
    return default if chosen is None else chosen
