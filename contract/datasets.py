"""THE dataset reader and checker, shared by the app (upload checks, answered at once) and the worker.

Torch-free and import-light: the web process imports it. Reads .jsonl/.json/.csv/.parquet into rows,
remembering where each row came from (the line of a JSONL or CSV file, the row of a Parquet table), and
checks every row against one of the three formats: chat `messages`, `prompt` + `completion`, or `text`.
Chat rows must be renderable by a chat template: an optional system message first, then user and
assistant turns alternating, starting with the user, none of them empty.

Problems carry their line number; the app answers them as 422 {"problems": [{"line", "message"}]} and
the worker raises `DatasetError`, whose text names the lines too.

Every check is linear in the size of the file and bounded per row (MAX_COLUMNS, MAX_ROW_CHARS): the app
runs it on untrusted uploads, so one hostile file must cost little and be refused early. A caller may
pass a `stop` flag (threading.Event) that is checked between rows: the app sets it when the client leaves.

It is one thing at ~560 lines on purpose: the four readers share the row-origin bookkeeping and the
limits, and the format checks must see rows exactly as every reader yields them.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

FORMATS = ("messages", "prompt_completion", "text")
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_PROBLEMS = 100  # kept in detail; the total is still counted
EXPECTED_COLUMNS = "'messages' (chat), 'prompt' + 'completion', or 'text'"
# Training uses one to three columns; a thousand leaves room for metadata and refuses the 100k-column
# files whose checks would otherwise cost minutes of a CPU.
MAX_COLUMNS = 1000
# A CSV record (all its physical lines) may hold at most this many characters; a longer one is refused
# before it is parsed, so a single 200 MB "row" never sits in memory as a million cells.
MAX_ROW_CHARS = 1 << 20
# Where a JSON document nests deeper than this, its line is named (the decoder's own limit is ~1000).
NESTING_SHOWN = 500


class DatasetError(ValueError):
    """The dataset cannot be used; the message names the file and rows at fault and what to do."""


class CheckStopped(Exception):
    """The caller's stop flag was set (the client left): the check ended early and answers nothing."""


class StopFlag(Protocol):
    """What a check polls between rows; threading.Event is one."""

    def is_set(self) -> bool: ...


def _stop_if_asked(stop: StopFlag | None) -> None:
    if stop is not None and stop.is_set():
        raise CheckStopped


def _columns_problem(count: int) -> str:
    return (
        f"{count} columns; at most {MAX_COLUMNS} columns are allowed. Keep only the columns training uses "
        f"({EXPECTED_COLUMNS}) and upload again"
    )


def _unreadable_json(exc: RecursionError | ValueError) -> str:
    """Why the decoder gave up on valid-looking JSON: nesting past its recursion limit, or a huge integer."""
    if isinstance(exc, RecursionError):
        return "values nested too deeply to read (hundreds of levels); flatten this row"
    digits = sys.get_int_max_str_digits()
    return f"a number with more than {digits} digits; write it as a string or shorten it"


_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_JSON_NESTING_TOKENS = re.compile(_JSON_STRING + r"|[\[{]|[\]}]")


def _line_of_deep_nesting(text: str) -> int:
    """The line where a JSON document first nests deeper than NESTING_SHOWN (1 when none does)."""
    depth = 0
    for match in _JSON_NESTING_TOKENS.finditer(text):  # strings are skipped whole, by the regex engine
        first = match.group()[0]
        if first in "[{":
            depth += 1
            if depth > NESTING_SHOWN:
                return text.count("\n", 0, match.start()) + 1
        elif first in "]}":
            depth -= 1
    return 1


def _line_of_long_number(text: str) -> int:
    """The line of the first number longer than Python converts to an int (1 when none is)."""
    too_long = sys.get_int_max_str_digits() + 1
    for match in re.finditer(_JSON_STRING + r"|\d{" + str(too_long) + ",}", text):
        if not match.group().startswith('"'):  # digits inside a string are text, not a number
            return text.count("\n", 0, match.start()) + 1
    return 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row: where (`unit` `line`, 1-based, as in the file) and what."""

    line: int
    message: str
    unit: str = "line"  # "line" for JSONL/CSV, "row" for Parquet, "item" for a JSON array

    @property
    def where(self) -> str:
        """'line 3', 'row 3' or 'item 3'."""
        return f"{self.unit} {self.line}"

    def as_dict(self) -> dict[str, Any]:
        """The API shape: {"line", "message", "where"}."""
        return {"line": self.line, "message": self.message, "where": self.where}


class DatasetInvalid(DatasetError):
    """Rows of the dataset are wrong; `problems` lists them (at most MAX_PROBLEMS), `total` counts all."""

    def __init__(
        self, problems: Sequence[Problem], *, total: int | None = None, name: str = "", headline: str = ""
    ) -> None:
        self.problems = list(problems)[:MAX_PROBLEMS]
        self.total = total if total is not None else len(problems)
        self.name = name
        prefix = f"{name} " if name else ""
        listed = "; ".join(f"{prefix}{p.where}: {p.message}" for p in self.problems[:10])
        more = f" (and {self.total - 10} more)" if self.total > 10 else ""
        super().__init__(headline + listed + more)


@dataclass
class LoadedRows:
    """Rows of a file and, for each, its line (or row) number in that file."""

    rows: list[dict[str, Any]]
    lines: list[int]
    unit: str = "line"


@dataclass
class CheckedDataset:
    """A dataset that passed every check: its rows (normalised), their lines, and the detected format."""

    rows: list[dict[str, Any]]
    lines: list[int]
    format: str
    unit: str = "line"
    columns: list[str] = field(default_factory=list)


class _Collector:
    """Collects problems up to MAX_PROBLEMS, counting the rest."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.problems: list[Problem] = []
        self.total = 0

    def add(self, line: int, message: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, message, self.unit))

    def raise_if_any(self, name: str) -> None:
        if self.total:
            raise DatasetInvalid(self.problems, total=self.total, name=name)


# ---------------------------------------------------------------------------------------------- reading


def _read_jsonl(path: Path, stop: StopFlag | None = None) -> tuple[LoadedRows, _Collector]:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    found = _Collector("line")
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            _stop_if_asked(stop)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                found.add(number, f"not UTF-8 text ({exc.reason}); save the file as UTF-8")
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                found.add(number, f"not valid JSON ({exc.msg} at column {exc.colno}); fix or remove it")
                continue
            except (RecursionError, ValueError) as exc:  # valid JSON the decoder refuses to build
                found.add(number, _unreadable_json(exc))
                continue
            if not isinstance(row, dict):
                found.add(number, f"expected a JSON object with the row's columns, got {_json_kind(row)}")
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
        found.add(line, _unreadable_json(exc))
        return LoadedRows([], [], "line"), found
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
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
            found.add(i, f"expected a JSON object with the row's columns, got {_json_kind(row)}")
    return LoadedRows(rows, lines, "item"), found


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
                )
                break  # where the next record starts is unknown
            except csv.Error as exc:
                found.add(start, f"not valid CSV ({exc}); check the quoting")
                break
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                if len(record) > MAX_COLUMNS:
                    # refused before any row is read: the rest of the file cannot be used anyway
                    found.add(start, f"the header names {_columns_problem(len(record))}")
                    break
                header, header_line = [c.strip() for c in record], start
                counts = Counter(header)  # linear: header.count() per column was quadratic
                dupes = sorted(c for c, n in counts.items() if n > 1)
                if dupes:
                    found.add(start, f"the header repeats column(s) {', '.join(map(repr, dupes))}")
                continue
            if len(record) > len(header):
                found.add(
                    start,
                    f"{len(record)} fields but the header on line {header_line} names {len(header)}; "
                    "quote cells that contain commas",
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
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{shown}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    raise DatasetError(
        f"{shown}: unsupported file type {kind or '(none)'!r}; use .jsonl, .json, .csv or .parquet"
    )


def read_file(path: Path, *, suffix: str | None = None, name: str | None = None) -> LoadedRows:
    """Rows of a .jsonl/.json/.csv/.parquet file with their line numbers; DatasetInvalid for bad lines.

    `suffix` overrides the file's own (an upload kept under a temporary name); `name` is what messages
    call the file.
    """
    loaded, found = _read_any(path, suffix, name)
    found.raise_if_any(name or path.name)
    return loaded


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.csv/.parquet file as dicts (DatasetError names the bad lines)."""
    return read_file(path).rows


# ---------------------------------------------------------------------------------------------- checking


def _columns(row: dict[str, Any]) -> str:
    names = [str(k) for k in row if k is not None][:10]
    return ", ".join(repr(n) for n in names) if names else "no columns"


def detect_format(row: dict[str, Any]) -> str:
    """messages | prompt_completion | text, from the columns of one row (DatasetError when none fits)."""
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    raise DatasetError(missing_columns_message(row))


def missing_columns_message(row: dict[str, Any]) -> str:
    """Which columns a row has and which it lacks, for a row that fits no format."""
    if "prompt" in row and "completion" not in row:
        return f"missing column 'completion' (it has 'prompt'); expected {EXPECTED_COLUMNS}"
    if "completion" in row and "prompt" not in row:
        return f"missing column 'prompt' (it has 'completion'); expected {EXPECTED_COLUMNS}"
    return f"missing columns: the row has {_columns(row)}; expected {EXPECTED_COLUMNS}"


def _chat_problem(row: dict[str, Any]) -> str | None:
    if "messages" not in row:
        return f"missing column 'messages' (the row has {_columns(row)})"
    msgs = row["messages"]
    if isinstance(msgs, str):  # CSV cells carry the conversation as JSON text
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError as exc:
            return f"column 'messages' is not valid JSON ({exc.msg}); write the list of turns as JSON"
        except (RecursionError, ValueError) as exc:
            return f"column 'messages': {_unreadable_json(exc)}"
        row["messages"] = msgs
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(msgs, start=1):
        if not isinstance(m, dict):
            return f"message {i} is not an object with 'role' and 'content'"
        if m.get("role") not in ROLES:
            return f"message {i} has role {m.get('role')!r}; use system, user or assistant"
        if not isinstance(m.get("content"), str):
            return f"message {i} ({m['role']}) needs a string 'content'"
        if not m["content"].strip():
            return f"message {i} ({m['role']}) is empty; give it some text or remove the turn"
    return _role_order_problem([m["role"] for m in msgs])


def _role_order_problem(roles: list[str]) -> str | None:
    """Why a chat template cannot render this sequence of roles (None when it can)."""
    for i, role in enumerate(roles[1:], start=2):
        if role == "system":
            return f"message {i} is a system message; only the first message may be one"
    start = 2 if roles[0] == "system" else 1
    turns = roles[start - 1 :]
    if not turns:
        return "only a system message: add a user turn and an assistant answer"
    if turns[0] != "user":
        return (
            f"the conversation starts with an assistant turn (message {start}); "
            "the chat template needs a user turn first"
        )
    for i in range(1, len(turns)):
        if turns[i] == turns[i - 1]:
            n = start + i
            return (
                f"messages {n - 1} and {n} are both {turns[i]} turns; the chat template needs user "
                "and assistant turns to alternate (merge them into one)"
            )
    if "assistant" not in turns:
        return "no assistant message: there is nothing to learn from this row"
    return None


def row_problem(row: dict[str, Any], fmt: str) -> str | None:
    """What is wrong with one row for format `fmt`, or None. Turns CSV's JSON `messages` cells into lists."""
    if fmt == "messages":
        return _chat_problem(row)
    if fmt == "prompt_completion":
        missing = [c for c in ("prompt", "completion") if row.get(c) is None]
        if missing:
            return f"missing column(s) {', '.join(map(repr, missing))} (the row has {_columns(row)})"
        if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
            return "'prompt' and 'completion' must both be strings"
        if not row["prompt"].strip():
            return "'prompt' is empty: give the model something to answer"
        if not row["completion"].strip():
            return "'completion' is empty: there is nothing to learn from this row"
        return None
    if fmt == "text":
        if row.get("text") is None:
            return f"missing column 'text' (the row has {_columns(row)})"
        if not isinstance(row["text"], str) or not row["text"].strip():
            return "'text' must be a non-empty string"
        return None
    raise DatasetError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")


def check_rows(
    rows: Sequence[dict[str, Any]], fmt: str, *, lines: Sequence[int] | None = None, unit: str = "row"
) -> tuple[list[Problem], int]:
    """(problems (at most MAX_PROBLEMS), total count) of `rows` for format `fmt`, one per bad row."""
    found = _Collector(unit)
    for i, row in enumerate(rows):
        message = row_problem(row, fmt)
        if message is not None:
            found.add(lines[i] if lines is not None else i + 1, message)
    return found.problems, found.total


def validate_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    """Raise DatasetInvalid naming (up to 10) bad rows by number (1-based, in order)."""
    problems, total = check_rows(rows, fmt)
    if total:
        raise DatasetInvalid(problems, total=total, headline=f"{total} bad row(s) for format {fmt}: ")


def check_file(
    path: Path,
    *,
    fmt: str = "auto",
    suffix: str | None = None,
    name: str | None = None,
    stop: StopFlag | None = None,
) -> CheckedDataset:
    """Read and check a whole file: DatasetInvalid lists every bad line (parse errors first).

    CheckStopped when `stop` is set meanwhile (polled between rows).
    """
    shown = name or path.name
    loaded, found = _read_any(path, suffix, shown, stop)
    if not loaded.rows:
        found.raise_if_any(shown)
        raise DatasetError(f"{shown} has no rows; add some examples (one JSON object per line for JSONL)")
    if fmt == "auto":
        try:
            fmt = detect_format(loaded.rows[0])
        except DatasetError as exc:
            found.add(loaded.lines[0], str(exc))
            found.problems.sort(key=lambda p: p.line)
            found.raise_if_any(shown)
    for i, row in enumerate(loaded.rows):
        _stop_if_asked(stop)
        if len(row) > MAX_COLUMNS:
            found.add(loaded.lines[i], f"the row has {_columns_problem(len(row))}")
            continue
        message = row_problem(row, fmt)
        if message is not None:
            found.add(loaded.lines[i], message)
    # parse problems and row problems, in file order
    found.problems.sort(key=lambda p: p.line)
    found.raise_if_any(shown)
    columns = sorted({str(k) for row in loaded.rows[:100] for k in row})
    return CheckedDataset(loaded.rows, loaded.lines, fmt, loaded.unit, columns)
