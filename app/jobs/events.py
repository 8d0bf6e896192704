"""How a job's events read on its page: the events table, the sample cards and the chart markers."""

from __future__ import annotations

from typing import Any

# event kinds shown in the events table (metrics are charted; progress/heartbeat are summarised in the header)
LISTED_EVENT_KINDS = ("status", "log", "preflight", "checkpoint", "guard", "artifact")
MARKER_EVENT_KINDS = ("guard", "preflight", "checkpoint")
DETAIL_EVENT_LIMIT = 300
WRAPPER_NAMES = frozenset({"model", "language_model", "base_model"})  # say nothing in a module's name
KEPT_NAMES_SHOWN = 6  # a preflight event names this many kept modules, then "and N more"


def readable_module(pattern: str) -> str:
    """A skip pattern as a module family: `model\\.language_model\\.layers\\.\\d+\\.altup\\.modality_router`
    reads "layers.N.altup", `.*\\.altup\\.` reads "altup", `^lm_head$` reads "lm_head"."""
    text = pattern.strip("^$").replace("\\d+", "N").replace("\\.", ".").replace(".*", "").replace("\\", "")
    parts = [p for p in text.strip(".").split(".") if p and p not in WRAPPER_NAMES]
    if "N" in parts:  # one family per repeated block: what is kept in every layer
        parts = parts[: parts.index("N") + 2]
    return ".".join(parts) or pattern


def kept_summary(kept: list[Any]) -> str:
    """The modules preflight kept in full precision, readable and short (one line in the events table)."""
    names = list(dict.fromkeys(readable_module(str(k)) for k in kept))
    shown = ", ".join(names[:KEPT_NAMES_SHOWN])
    more = f" and {len(names) - KEPT_NAMES_SHOWN} more" if len(names) > KEPT_NAMES_SHOWN else ""
    return shown + more


def describe_event(event: dict[str, Any]) -> str:
    """One line of plain words for an event in the events table."""
    kind = event.get("kind")
    p = event.get("payload") or {}
    if kind == "status":
        return " — ".join(str(x) for x in (p.get("status"), p.get("message")) if x)
    if kind == "log":
        return str(p.get("message", ""))
    if kind == "preflight":
        verdict = "passed" if p.get("ok") else "found problems"
        kept = p.get("kept_in_full_precision") or []
        extra = f" (kept in full precision: {kept_summary(kept)})" if kept else ""
        return f"preflight {verdict}: {p.get('summary', '')}{extra}"
    if kind == "checkpoint":
        return f"checkpoint saved at step {p.get('step', event.get('step'))}: {p.get('path', '')}"
    if kind == "guard":
        return f"guard {p.get('action', '')}: {p.get('reason', '')}"
    if kind == "artifact":
        return f"{p.get('name', 'artifact')} written to {p.get('path', '')}"
    if kind == "sample":
        return f"{p.get('prompt', '')} → {p.get('completion', '')}"
    return ", ".join(f"{k}={v}" for k, v in p.items())


def event_level(event: dict[str, Any]) -> str:
    """A CSS hint: error, warning or info."""
    p = event.get("payload") or {}
    if event.get("kind") == "guard" or (event.get("kind") == "preflight" and not p.get("ok", True)):
        return "warning"
    if event.get("kind") == "log":
        return str(p.get("level", "info"))
    return "info"


def event_sections(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The events split into table rows, sample cards (newest first) and chart markers."""
    listed = [ev for ev in events if ev["kind"] in LISTED_EVENT_KINDS]
    samples = [ev for ev in events if ev["kind"] == "sample"]
    markers = [
        {"step": ev["step"], "kind": ev["kind"], "text": describe_event(ev)}
        for ev in events
        if ev["kind"] in MARKER_EVENT_KINDS
    ]
    return {"events": listed, "samples": list(reversed(samples)), "markers": markers}
