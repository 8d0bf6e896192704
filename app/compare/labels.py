"""What tells compared runs apart: the config values that differ, as short `key=value` labels.

Sweep members share a long name ("demo: tiny Gemma 3n learns capitals · learning_…"), which legends and the
summary cut at their width; the swept values, the only thing that differs, were hidden. Each run now also
carries the differing values themselves, short enough to show whole.
"""

from __future__ import annotations

from typing import Any

MAX_PARTS = 3  # more differing keys than this: the first three, then "+N more" (the config table has all)
IGNORED_LEAVES = frozenset({"name", "notes", "description"})  # differ by design, say nothing new


def short_value(value: Any) -> str:
    """A config value in a label: floats in their shortest exact form, lists joined, None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, list):
        return ",".join(short_value(v) for v in value) or "[]"
    return str(value)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part, or by more parts where two keys would read the same."""
    short: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        depth = 1
        while depth < len(parts):
            candidate = ".".join(parts[-depth:])
            clashes = [k for k in keys if k != key and (k == candidate or k.endswith("." + candidate))]
            if not clashes:
                break
            depth += 1
        short[key] = ".".join(parts[-depth:])
    return short


def distinguishing_labels(table: dict[str, dict[int, Any]], differing: list[str]) -> dict[int, str]:
    """{job_id: "learning_rate=0.0002 · r=8"} from the config keys whose values differ between the runs."""
    keys = [k for k in differing if k.rsplit(".", 1)[-1] not in IGNORED_LEAVES]
    if not keys or not table:
        return {job_id: "" for values in table.values() for job_id in values}
    short = _short_keys(keys)
    shown = keys[:MAX_PARTS]
    more = len(keys) - len(shown)
    ids = list(next(iter(table.values())))
    labels: dict[int, str] = {}
    for job_id in ids:
        parts = [f"{short[k]}={short_value(table[k].get(job_id))}" for k in shown]
        if more:
            parts.append(f"+{more} more")
        labels[job_id] = " · ".join(parts)
    return labels
