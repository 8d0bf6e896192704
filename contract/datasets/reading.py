"""Read a dataset file into rows, remembering where each row came from.

.jsonl (one object a line), .json (a list of objects, or an object holding one: pandas' `records`,
`columns`, `split` and `table` orients, or {"<key>": [...]}), .csv (a header, then records), .parquet
(as pyarrow, pandas or `datasets` write it) and .txt (plain text: each paragraph, i.e. the text between
blank lines, becomes a row for continued pretraining). Every reader is linear in the file and bounded
per row (MAX_COLUMNS, MAX_ROW_CHARS), and polls the caller's stop flag between rows.

These hand-written readers, not the `datasets` library, read uploads: the web process must not import
the ML stack, and only a line-by-line reader can name every bad line instead of failing at the first.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from contract.datasets.problems import (
    MAX_COLUMNS,
    MAX_ROW_CHARS,
    DatasetError,
    LoadedRows,
    StopFlag,
    _Collector,
    _columns_problem,
    _line_of_deep_nesting,
    _line_of_long_number,
    _stop_if_asked,
    _unreadable_json,
)


def _text_lines(path: Path, found: _Collector, stop: StopFlag | None) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a line that is not UTF-8 is a problem and skipped, a byte-order
    mark some editors write is dropped."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            _stop_if_asked(stop)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                found.add(number, f"not UTF-8 text ({exc.reason}); save the file as UTF-8", "not UTF-8")
                continue
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _read_jsonl(path: Path, stop: StopFlag | None = None) -> tuple[LoadedRows, _Collector]:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    found = _Collector("line")
    for number, line in _text_lines(path, found, stop):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            found.add(
                number,
                f"not valid JSON ({exc.msg} at column {exc.colno}); fix or remove it",
                "not valid JSON",
            )
            continue
        except (RecursionError, ValueError) as exc:  # valid JSON the decoder refuses to build
            found.add(number, _unreadable_json(exc), "unreadable JSON")
            continue
        if not isinstance(row, dict):
            found.add(
                number,
                f"expected a JSON object with the row's columns, got {_json_kind(row)}",
                "not an object",
            )
            continue
        rows.append(row)
        lines.append(number)
    return LoadedRows(rows, lines, "line"), found


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return type(value).__name__


def _read_json(path: Path, name: str, stop: StopFlag | None = None) -> tuple[LoadedRows, _Collector]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path, stop)  # JSON Lines saved with a .json name
    except (RecursionError, ValueError) as exc:
        # the decoder does not say where; find the line ourselves (linear, only on this failure)
        if isinstance(exc, RecursionError):
            line = _line_of_deep_nesting(text)
        else:
            line = _line_of_long_number(text)
        found = _Collector("line")
        found.add(line, _unreadable_json(exc), "unreadable JSON")
        return LoadedRows([], [], "line"), found
    note = ""
    if isinstance(data, dict):
        data, note = _rows_of_object(data, name)
    if not isinstance(data, list):
        raise DatasetError(f"{name}: expected a JSON list of objects (or JSON Lines), got {_json_kind(data)}")
    found = _Collector("item")
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for i, row in enumerate(data, start=1):
        _stop_if_asked(stop)
        if isinstance(row, dict):
            rows.append(row)
            lines.append(i)
        else:
            found.add(
                i, f"expected a JSON object with the row's columns, got {_json_kind(row)}", "not an object"
            )
    return LoadedRows(rows, lines, "item", note), found


class _RowTooWide(Exception):
    """A CSV record grew past MAX_ROW_CHARS while csv.reader was still asking for its lines."""


class _WidthLimitedLines:
    """The lines csv.reader asks for, read with a bound: a record longer than MAX_ROW_CHARS (over all its
    physical lines) raises _RowTooWide before it is ever held whole in memory."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.record_chars = 0  # the caller resets it when a record is complete

    def __iter__(self) -> _WidthLimitedLines:
        return self

    def __next__(self) -> str:
        line = self.fh.readline(MAX_ROW_CHARS + 1 - self.record_chars)
        if not line:
            raise StopIteration
        self.record_chars += len(line)
        if self.record_chars > MAX_ROW_CHARS:
            raise _RowTooWide
        return line


def _read_csv(path: Path, stop: StopFlag | None = None) -> tuple[LoadedRows, _Collector]:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    found = _Collector("line")
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        source = _WidthLimitedLines(fh)
        reader = csv.reader(source)
        header: list[str] | None = None
        header_line = 0
        while True:
            _stop_if_asked(stop)
            start = reader.line_num + 1  # a quoted cell may span lines: the row starts here
            source.record_chars = 0
            try:
                record = next(reader)
            except StopIteration:
                break
            except _RowTooWide:
                found.add(
                    start,
                    f"the row is over the limit of {MAX_ROW_CHARS} characters; shorten it or check the "
                    "quoting (an unclosed quote swallows the lines after it)",
                    "row too long",
                )
                break  # where the next record starts is unknown
            except csv.Error as exc:
                found.add(start, f"not valid CSV ({exc}); check the quoting", "not valid CSV")
                break
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                if len(record) > MAX_COLUMNS:
                    # refused before any row is read: the rest of the file cannot be used anyway
                    found.add(start, f"the header names {_columns_problem(len(record))}", "too many columns")
                    break
                header, header_line = [c.strip() for c in record], start
                counts = Counter(header)  # linear: header.count() per column was quadratic
                dupes = sorted(c for c, n in counts.items() if n > 1)
                if dupes:
                    found.add(start, f"the header repeats column(s) {', '.join(map(repr, dupes))}", "header")
                continue
            if len(record) > len(header):
                found.add(
                    start,
                    f"{len(record)} fields but the header on line {header_line} names {len(header)}; "
                    "quote cells that contain commas",
                    "too many fields",
                )
                continue
            # a short record leaves its last columns missing, which the row checks then name
            rows.append(dict(zip(header, record, strict=False)))
            lines.append(start)
    return LoadedRows(rows, lines, "line"), found


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[\w.+@-]+/)*[\w.+@-]+")


def _without_paths(message: str, path: Path) -> str:
    """A library's error text with server file system paths taken out (it is shown to whoever uploaded)."""
    for known in (str(path), str(path.parent)):
        message = message.replace(known, "<file>")
    return _ABSOLUTE_PATH.sub("<path>", message)


def _read_parquet(path: Path, name: str, stop: StopFlag | None = None) -> tuple[LoadedRows, _Collector]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    try:
        with path.open("rb") as fh:  # a file object: pyarrow's messages then carry no path
            table = pq.ParquetFile(fh)
            width = len(table.schema_arrow.names)
            if width > MAX_COLUMNS:  # known from the footer, before any row is decoded
                raise DatasetError(f"{name} has {_columns_problem(width)}")
            for batch in table.iter_batches(batch_size=1024):
                _stop_if_asked(stop)
                rows.extend(batch.to_pylist())
    except (pa.ArrowException, OSError) as exc:
        reason = _without_paths(str(exc), path)
        raise DatasetError(f"{name}: not a readable Parquet file ({reason}); export it again") from None
    return LoadedRows(rows, list(range(1, len(rows) + 1)), "row"), _Collector("row")


def _read_any(
    path: Path, suffix: str | None, name: str | None, stop: StopFlag | None = None
) -> tuple[LoadedRows, _Collector]:
    """Rows that parsed, and the lines that did not."""
    kind = (suffix or path.suffix).lower()
    shown = name or path.name
    try:
        if kind == ".jsonl":
            return _read_jsonl(path, stop)
        if kind == ".json":
            return _read_json(path, shown, stop)
        if kind == ".csv":
            return _read_csv(path, stop)
        if kind == ".parquet":
            return _read_parquet(path, shown, stop)
        if kind == ".txt":
            return _read_text(path, stop)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{shown}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    raise DatasetError(
        f"{shown}: unsupported file type {kind or '(none)'!r}; use .jsonl, .json, .csv, .parquet or .txt"
    )


def read_file(path: Path, *, suffix: str | None = None, name: str | None = None) -> LoadedRows:
    """Rows of a .jsonl/.json/.csv/.parquet/.txt file with their line numbers; DatasetInvalid for bad lines.

    `suffix` overrides the file's own (an upload kept under a temporary name); `name` is what messages
    call the file.
    """
    loaded, found = _read_any(path, suffix, name)
    found.raise_if_any(name or path.name)
    return loaded


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.csv/.parquet/.txt file as dicts (DatasetError names the bad lines)."""
    return read_file(path).rows


def _rows_of_object(data: dict[str, Any], name: str) -> tuple[Any, str]:
    """The rows a JSON object holds, and a note saying where they were found (DatasetError when none)."""
    columns = data.get("columns")
    if isinstance(columns, list) and isinstance(data.get("data"), list):  # pandas orient="split"
        names = [str(c) for c in columns]
        rows = [dict(zip(names, r, strict=False)) if isinstance(r, list) else r for r in data["data"]]
        return rows, "rows from a pandas 'split' JSON (columns + data)"
    lists = [k for k, v in data.items() if isinstance(v, list)]
    if len(lists) == 1:
        return data[lists[0]], f"rows from the JSON object's key {lists[0]!r}"
    values = list(data.values())
    if values and all(isinstance(v, dict) for v in values) and all(str(k).isdigit() for k in data):
        return values, "rows from a pandas 'index' JSON ({index: {column: value}})"
    if values and all(isinstance(v, dict) for v in values):
        keys = list(values[0])
        if all(list(v) == keys for v in values[:MAX_COLUMNS]) and len(values) <= MAX_COLUMNS:
            # pandas orient="columns" (its default): {column: {index: value}}
            rows = [{str(c): data[c].get(k) for c in data} for k in keys]
            return rows, "rows from a pandas 'columns' JSON ({column: {index: value}})"
    shown = ", ".join(repr(str(k)) for k in list(data)[:10]) or "no keys"
    if len(lists) > 1:
        raise DatasetError(
            f"{name}: a JSON object with several lists ({', '.join(map(repr, lists[:10]))}); keep only "
            "the key that holds the rows, or save the rows as a JSON list or JSON Lines"
        )
    raise DatasetError(
        f"{name}: expected a JSON list of objects (or JSON Lines), got an object with keys {shown} and no "
        "list of rows under any of them; save the rows as a JSON list or JSON Lines"
    )


def _read_text(path: Path, stop: StopFlag | None = None) -> tuple[LoadedRows, _Collector]:
    """Plain text: each paragraph (lines up to a blank line) is one {"text": ...} row."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    found = _Collector("line")
    current: list[str] = []
    start = chars = 0
    too_long = False

    def close() -> None:
        if current and not too_long:
            rows.append({"text": "\n".join(current)})
            lines.append(start)

    for number, line in _text_lines(path, found, stop):
        if not line.strip():
            close()
            current, chars, too_long = [], 0, False
            continue
        if not current and not too_long:
            start = number
        chars += len(line)
        if chars > MAX_ROW_CHARS and not too_long:
            found.add(
                start,
                f"the paragraph is over the limit of {MAX_ROW_CHARS} characters; put blank lines "
                "between documents",
                "row too long",
            )
            too_long, current = True, []
        if not too_long:
            current.append(line.rstrip("\r\n"))
    close()
    return LoadedRows(rows, lines, "line", "each paragraph (text between blank lines) is one row"), found


def read_with_problems(
    path: Path, *, suffix: str | None = None, name: str | None = None, stop: StopFlag | None = None
) -> tuple[LoadedRows, _Collector]:
    """Rows that parsed, and the collector holding the lines that did not (for `check_loaded`)."""
    return _read_any(path, suffix, name, stop)
