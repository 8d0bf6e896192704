"""Check a whole dataset: read it, recognise its layout, convert and check every row, and say what was
understood (the `intake`: layout, conversion, rows, columns used, ignored and held back).

Shared by the app (upload checks, answered at once) and the worker (the same rows, the same words).
Problems are counted per row and grouped by kind; a layout that cannot be used is one problem of every
row, said once with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contract.datasets import layouts
from contract.datasets.convert import convert
from contract.datasets.problems import (
    FIRST_LINES_SHOWN,
    MAX_COLUMNS,
    CheckedDataset,
    DatasetError,
    Issue,
    LoadedRows,
    StopFlag,
    _Collector,
    _columns_problem,
    _stop_if_asked,
)
from contract.datasets.reading import _read_any

COLUMNS_LISTED = 1000  # rows whose keys make the column list (rows of one file share their columns)


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of the first rows, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows[:COLUMNS_LISTED]:
        if len(row) > MAX_COLUMNS:
            continue
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def _mapping_dict(columns: Any) -> dict[str, Any] | None:
    """A ColumnsConfig (or a dict, validated as one) as the dict `layouts.detect` reads."""
    if columns is None:
        return None
    if not hasattr(columns, "model_dump"):
        from contract.datasets.mapping import columns_from_text

        columns = columns_from_text(json.dumps(columns))
        if columns is None:
            return None
    return dict(columns.model_dump(exclude_defaults=True))


def _canonical(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    if fmt == "text":
        return {"text": row["text"]}
    if fmt == "prompt_completion":
        return {"prompt": row["prompt"], "completion": row["completion"]}
    return row


def _held_back(spec: layouts.Spec, columns: list[str], skipped: int, kept: int) -> list[dict[str, str]]:
    used = set(spec.used())
    notes = []
    if spec.label:
        notes.append(
            {
                "column": spec.label,
                "meaning": "KTO labels: whether each answer is a good one",
                "outcome": f"supervised fine-tuning leaves out the {skipped} row(s) labelled false and "
                f"learns from the {kept} labelled true; method: kto learns from both",
            }
        )
    for column in ("chosen", "rejected"):
        if column in columns and column not in used:
            notes.append(
                {
                    "column": column,
                    "meaning": "one answer of a preference pair",
                    "outcome": "not used: supervised fine-tuning learns from one answer per row; preference "
                    "tuning (DPO/ORPO/KTO) is not available yet",
                }
            )
    for column in columns:
        if column.lower() in layouts.MEDIA_COLUMNS and column not in used:
            notes.append(
                {
                    "column": column,
                    "meaning": layouts.MEDIA_COLUMNS[column.lower()],
                    "outcome": "empty in every row read, so ignored (Tuneboard trains on text only for now)",
                }
            )
    if "weight" in columns and "weight" not in used:
        notes.append(
            {
                "column": "weight",
                "meaning": "a weight per row",
                "outcome": "not honoured: every row counts the same (a per-turn 'weight' in messages is)",
            }
        )
    return notes


def _count(row: dict[str, Any], stats: dict[str, int]) -> None:
    """Add what a converted row holds that changes training: tool calls, untrained turns."""
    msgs = row.get("messages")
    if not isinstance(msgs, list):
        return
    if row.get("tools") or any(m.get("tool_calls") or m.get("role") == "tool" for m in msgs):
        stats["tools"] += 1
    stats["untrained"] += sum(1 for m in msgs if m.get("role") == "assistant" and m.get("weight") == 0)


def _details(stats: dict[str, int]) -> list[str]:
    notes = []
    if stats["tools"]:
        notes.append(
            f"{stats['tools']} row(s) with tools or tool calls: rendered through the model's chat template; "
            "the assistant's calls are trained, the tool results are not"
        )
    if stats["untrained"]:
        notes.append(
            f"{stats['untrained']} assistant turn(s) with weight 0 are context only: shown, not trained"
        )
    return notes


def _layout_problem(found: _Collector, loaded: LoadedRows, message: str) -> None:
    """A layout that fits no row: one problem said once, counted for every row."""
    found.add(loaded.lines[0], Issue(message, "layout"))
    group = found.groups["layout"]
    group.count = len(loaded.rows)
    group.first_lines = loaded.lines[:FIRST_LINES_SHOWN]
    found.total += len(loaded.rows) - 1


def check_loaded(
    loaded: LoadedRows,
    found: _Collector,
    *,
    name: str,
    fmt: str = "auto",
    columns: Any = None,
    stop: StopFlag | None = None,
    accept_preference: bool = False,
    keep_source: bool = False,
) -> CheckedDataset:
    """Convert and check the rows a reader gave (with the problems it found): DatasetInvalid lists every
    bad row, grouped by kind.

    `accept_preference`: chosen/rejected pairs pass as format "preference" (an upload: the method is chosen
    later) instead of being refused. `keep_source`: the result's rows are the file's own (what an upload
    stores; the worker converts them again, the same way), not the converted ones."""
    import contract.datasets as shared  # row_problem looked up at call time (tests count its calls)

    if not loaded.rows:
        found.raise_if_any(name)
        raise DatasetError(f"{name} has no rows; add some examples (one JSON object per line for JSONL)")
    mapping = _mapping_dict(columns)
    names = columns_of(loaded.rows)
    try:
        spec = layouts.detect(loaded.rows, names, mapping, fmt, accept_preference)
    except DatasetError as exc:
        _layout_problem(found, loaded, str(exc))
        found.raise_if_any(name)
        raise
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    skipped = 0
    stats = {"tools": 0, "untrained": 0}
    for i, row in enumerate(loaded.rows):
        if i % 256 == 0:
            _stop_if_asked(stop)
        line = loaded.lines[i]
        if len(row) > MAX_COLUMNS:
            found.add(line, f"the row has {_columns_problem(len(row))}", "too many columns")
            continue
        got = convert(row, spec)
        if got is None:
            skipped += 1
            continue
        if isinstance(got, Issue):
            found.add(line, got)
            continue
        message = shared.row_problem(got, spec.format) if spec.format != "preference" else None
        if message is not None:
            found.add(line, message)
            continue
        _count(got, stats)
        rows.append(row if keep_source else _canonical(got, spec.format))
        lines.append(line)
    used_rows = len(rows)
    if keep_source and skipped:  # stored whole: another method may use the rows SFT leaves out
        rows, lines = loaded.rows, loaded.lines  # (a row over MAX_COLUMNS was a problem, raised below)
    found.raise_if_any(name)
    if not used_rows:
        raise DatasetError(
            f"{name}: every row is labelled false, so supervised fine-tuning has nothing to learn from; "
            "preference tuning (DPO/ORPO/KTO) is not available yet"
        )
    used = spec.used()
    held = _held_back(spec, names, skipped, used_rows)
    held_names = {h["column"] for h in held}
    intake = {
        "layout": spec.layout,
        "layout_title": spec.title,
        "format": spec.format,
        "conversion": spec.conversion,
        "source_note": loaded.note,
        "rows": used_rows,
        "rows_read": len(loaded.rows),
        "rows_left_out": skipped,
        "columns_used": [c for c in names if c in used],
        "columns_ignored": [c for c in names if c not in used and c not in held_names],
        "held_back": held,
        "notes": _details(stats),
        "mapping": mapping,
    }
    return CheckedDataset(rows, lines, spec.format, loaded.unit, sorted(names[:100]), intake, True)


def check_file(
    path: Path,
    *,
    fmt: str = "auto",
    suffix: str | None = None,
    name: str | None = None,
    stop: StopFlag | None = None,
    columns: Any = None,
    accept_preference: bool = False,
    keep_source: bool = False,
) -> CheckedDataset:
    """Read and check a whole file: DatasetInvalid lists every bad line (parse errors first), grouped by
    kind. `columns` is a dataset.columns mapping (ColumnsConfig or dict). CheckStopped when `stop` is set
    meanwhile (polled between rows)."""
    shown = name or path.name
    loaded, found = _read_any(path, suffix, shown, stop)
    return check_loaded(
        loaded,
        found,
        name=shown,
        fmt=fmt,
        columns=columns,
        stop=stop,
        accept_preference=accept_preference,
        keep_source=keep_source,
    )
