"""What goes wrong with a dataset, counted right: errors, problems by line, and their grouping by kind.

A bad row is a `Problem` (where and what) of a `kind` ("not valid JSON", "turn order", ...). A file with
999 bad rows says 999, grouped by kind, each kind with the first lines where it happens, so one look
tells whether the whole file has one layout problem or a few rows are broken. At most MAX_PROBLEMS are
kept in detail; every one is counted.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

FORMATS = ("messages", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
MAX_PROBLEMS = 100  # kept in detail; the total is still counted
FIRST_LINES_SHOWN = 5  # per kind of problem
EXPECTED_COLUMNS = "'messages' (chat), 'prompt' + 'completion', or 'text'"
# Training uses one to three columns; a thousand leaves room for metadata and refuses the 100k-column
# files whose checks would otherwise cost minutes of a CPU.
MAX_COLUMNS = 1000
# A CSV record (all its physical lines) may hold at most this many characters; a longer one is refused
# before it is parsed, so a single 200 MB "row" never sits in memory as a million cells.
MAX_ROW_CHARS = 1 << 20
# Where a JSON document nests deeper than this, its line is named (the decoder's own limit is ~1000).
NESTING_SHOWN = 500


class Issue(str):
    """A problem's message that also knows its kind (a short phrase that groups like problems)."""

    kind: str

    def __new__(cls, message: str, kind: str = "other") -> Issue:
        made = super().__new__(cls, message)
        made.kind = kind
        return made


def kind_of(message: str) -> str:
    """The kind of a message: its own when it is an Issue, else "other"."""
    return getattr(message, "kind", "other")


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
    """One thing wrong with one row: where (`unit` `line`, 1-based, as in the file), what, and its kind."""

    line: int
    message: str
    unit: str = "line"  # "line" for JSONL/CSV/text, "row" for Parquet, "item" for a JSON array
    kind: str = "other"

    @property
    def where(self) -> str:
        """'line 3', 'row 3' or 'item 3'."""
        return f"{self.unit} {self.line}"

    def as_dict(self) -> dict[str, Any]:
        """The API shape: {"line", "message", "where", "kind"}."""
        return {"line": self.line, "message": self.message, "where": self.where, "kind": self.kind}


@dataclass
class ProblemGroup:
    """Every problem of one kind: how many, the first lines, and the first message as an example."""

    kind: str
    count: int
    first_lines: list[int]
    example: str
    unit: str = "line"

    def as_dict(self) -> dict[str, Any]:
        """The API shape."""
        return {
            "kind": self.kind,
            "count": self.count,
            "first_lines": self.first_lines,
            "example": self.example,
            "unit": self.unit,
        }

    def where(self) -> str:
        """'lines 3, 5, 9, ...' or 'row 4'."""
        lines = ", ".join(map(str, self.first_lines))
        more = ", ..." if self.count > len(self.first_lines) else ""
        return f"{self.unit}{'s' if self.count != 1 else ''} {lines}{more}"

    def sentence(self) -> str:
        """'12 × turn order (lines 3, 5, 9, ...), e.g. messages 1 and 2 are both user turns'."""
        return f"{self.count} × {self.kind} ({self.where()}), e.g. {self.example}"


class DatasetInvalid(DatasetError):
    """Rows of the dataset are wrong; `problems` lists them (at most MAX_PROBLEMS), `total` counts all,
    `groups` counts them by kind with the first lines of each."""

    def __init__(
        self,
        problems: Sequence[Problem],
        *,
        total: int | None = None,
        name: str = "",
        headline: str = "",
        groups: Sequence[ProblemGroup] | None = None,
    ) -> None:
        self.problems = list(problems)[:MAX_PROBLEMS]
        self.total = total if total is not None else len(problems)
        self.name = name
        self.groups = list(groups) if groups is not None else _group(self.problems)
        prefix = f"{name} " if name else ""
        listed = "; ".join(f"{prefix}{p.where}: {p.message}" for p in self.problems[:10])
        more = f" (and {self.total - 10} more)" if self.total > 10 else ""
        super().__init__(headline + listed + more)

    def summary(self) -> str:
        """'1 bad row (line 2): <message>' or '999 bad rows, 2 kinds: 998 turn order (lines 3, 5, ...),
        e.g. <message>; 1 not valid JSON (line 7), e.g. <message>' — the count and the groups at once."""
        head = f"{self.total} bad row{'s' if self.total != 1 else ''}"
        if len(self.groups) == 1:
            g = self.groups[0]
            return f"{head} ({g.where()}): {g.example}"
        return f"{head}, {len(self.groups)} kinds: " + "; ".join(g.sentence() for g in self.groups)


def _group(problems: Sequence[Problem]) -> list[ProblemGroup]:
    groups: dict[str, ProblemGroup] = {}
    for p in problems:
        found = groups.get(p.kind)
        if found is None:
            groups[p.kind] = ProblemGroup(p.kind, 1, [p.line], p.message, p.unit)
        else:
            found.count += 1
            if len(found.first_lines) < FIRST_LINES_SHOWN:
                found.first_lines.append(p.line)
    return list(groups.values())


@dataclass
class LoadedRows:
    """Rows of a file and, for each, its line (or row) number in that file."""

    rows: list[dict[str, Any]]
    lines: list[int]
    unit: str = "line"
    note: str = ""  # how the rows were found, when it is worth saying ("rows from the key 'data'")


@dataclass
class CheckedDataset:
    """A dataset that passed every check: its rows (converted to the internal form), their lines, the
    format, and what was understood of it (`intake`: layout, conversion, columns used and ignored)."""

    rows: list[dict[str, Any]]
    lines: list[int]
    format: str
    unit: str = "line"
    columns: list[str] = field(default_factory=list)
    intake: dict[str, Any] = field(default_factory=dict)
    converted: bool = False  # rows differ from the file's own (a conversion or a mapping was applied)


class _Collector:
    """Collects problems up to MAX_PROBLEMS, counting the rest, by kind."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.problems: list[Problem] = []
        self.total = 0
        self.groups: dict[str, ProblemGroup] = {}

    def add(self, line: int, message: str, kind: str | None = None) -> None:
        kind = kind or kind_of(message)
        self.total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, str(message), self.unit, kind))
        group = self.groups.get(kind)
        if group is None:
            self.groups[kind] = ProblemGroup(kind, 1, [line], str(message), self.unit)
        else:
            group.count += 1
            if len(group.first_lines) < FIRST_LINES_SHOWN:
                group.first_lines.append(line)

    def sort(self) -> None:
        self.problems.sort(key=lambda p: p.line)
        for group in self.groups.values():
            group.first_lines.sort()
        self.groups = dict(sorted(self.groups.items(), key=lambda kv: kv[1].first_lines[0]))

    def raise_if_any(self, name: str, headline: str = "") -> None:
        if self.total:
            self.sort()
            raise DatasetInvalid(
                self.problems,
                total=self.total,
                name=name,
                headline=headline,
                groups=list(self.groups.values()),
            )
