"""Bounded reads of a growing log file: the end of RUN_DIR/stderr.log, never the whole file."""

from __future__ import annotations

import os
from pathlib import Path

TAIL_BYTES = 16 * 1024
TAIL_LINES = 200
# the local launcher writes this line before each attempt, so the tail shows only the latest attempt
ATTEMPT_MARKER = "==== tuneboard: attempt "


def read_tail(path: Path, *, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> str:
    """The last `max_lines` lines in the last `max_bytes` of `path`, latest attempt only; "" if absent."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if start > 0:
        # the window began mid-line; drop the partial first line
        _, _, text = text.partition("\n")
    marker_at = text.rfind(ATTEMPT_MARKER)
    if marker_at != -1:
        line_end = text.find("\n", marker_at)
        text = "" if line_end == -1 else text[line_end + 1 :]
    lines = text.splitlines()
    return "\n".join(lines[-max_lines:])


def last_line(tail: str) -> str:
    """The last non-blank line of a tail (often the exception message), or ""."""
    for line in reversed(tail.splitlines()):
        if line.strip():
            return line.strip()
    return ""
