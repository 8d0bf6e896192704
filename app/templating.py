"""The Jinja environment every page module renders with, its number/time filters and the shared vocabulary.

Number formats follow one set of rules, here for the server-rendered text and in static/js/format.js
(`fmtNum`, `fmtDuration`) for what the scripts update live, so a value reads the same before and after
JavaScript touches it:

- missing → "—"; NaN → "NaN"; ±infinity → "∞" / "−∞" (the strings "nan", "inf", "-inf" too: that is how
  non-finite numbers travel in JSON);
- zero → "0"; a whole number below 10^15 → grouped digits ("12,345");
- below 0.001 or from 10^6 on → scientific with `digits - 1` decimals, the exponent bare: "1.000e-4";
- otherwise → `digits` significant digits, trailing zeros dropped, the integer part grouped: "1,234.5".

Durations: "1 h 02 min", "3 min 05 s", "42 s". Times: UTC text that the scripts replace with local time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from app.jobs.status import CANCELLABLE, PROGRESSING, RESUMABLE, TERMINAL, badge_class, status_vocabulary
from contract.metrics import browser_table

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
NONFINITE_TEXT = {"nan": "NaN", "inf": "∞", "-inf": "−∞"}
WHOLE_LIMIT = 1e15  # beyond this a float no longer holds every integer: scientific, not digits
SCIENTIFIC_BELOW = 1e-3
SCIENTIFIC_FROM = 1e6

templates = Jinja2Templates(directory=TEMPLATES_DIR)


def fmt_number(value: Any, digits: int = 4) -> str:
    """A compact number for tables, by the rules in this module's docstring."""
    if value is None:
        return "—"
    if isinstance(value, str) and value in NONFINITE_TEXT:
        return NONFINITE_TEXT[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("∞" if value > 0 else "−∞")
    if value == 0:
        return "0"
    if float(value).is_integer() and abs(value) < WHOLE_LIMIT:
        return f"{int(value):,}"
    if abs(value) < SCIENTIFIC_BELOW or abs(value) >= SCIENTIFIC_FROM:
        mantissa, exponent = f"{value:.{max(1, digits - 1)}e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    rounded = float(f"{value:.{digits}g}")
    return f"{int(rounded):,}" if rounded.is_integer() else f"{rounded:,}"


def fmt_gigabytes(value: Any) -> str:
    """Memory in GB with three significant digits ("—" when unknown)."""
    return "—" if value is None else f"{fmt_number(value, 3)} GB"


def fmt_duration(seconds: Any) -> str:
    """Seconds as "1 h 02 min", "3 min 05 s" or "42 s"."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def fmt_utc(value: str | None) -> str:
    """The UTC fallback text of an ISO timestamp (JavaScript replaces it with local time)."""
    if not value:
        return "—"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ts_iso(ts: float | None) -> str | None:
    """Seconds since the epoch (a worker's clock) as ISO 8601 UTC; None when no calendar date fits."""
    if ts is None or not math.isfinite(ts):
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # stored before ingest bounded it (e.g. ts=1e300)
        return None


def browser_vocabulary() -> dict[str, Any]:
    """What the page's scripts need to know by name: statuses with their sets, metric keys with panels."""
    return {"statuses": status_vocabulary(), **browser_table()}


def render_block(template_name: str, block_name: str, context: dict[str, Any]) -> str:
    """Render one named block of a page template (the htmx fragment of that part of the page)."""
    template = templates.env.get_template(template_name)
    return "".join(template.blocks[block_name](template.new_context(context)))


def is_htmx(request: Request) -> bool:
    """Whether htmx sent the request (it swaps the answer into the page rather than loading it)."""
    return request.headers.get("hx-request") == "true"


templates.env.filters["num"] = fmt_number
templates.env.filters["gb"] = fmt_gigabytes
templates.env.filters["duration"] = fmt_duration
templates.env.filters["utc"] = fmt_utc
templates.env.filters["ts_iso"] = ts_iso
templates.env.filters["badge_class"] = badge_class
templates.env.globals.update(
    TERMINAL_STATUSES=TERMINAL,
    CANCELLABLE_STATUSES=CANCELLABLE,
    RESUMABLE_STATUSES=RESUMABLE,
    PROGRESSING_STATUSES=PROGRESSING,
    BROWSER_VOCABULARY=browser_vocabulary(),
)
