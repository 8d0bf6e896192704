"""THE dataset reader, converter and checker, shared by the app (upload checks) and the worker.

Torch-free and import-light: the web process imports it. `reading` reads .jsonl/.json/.csv/.parquet/.txt
into rows with their line numbers; `layouts` recognises the layout (chat messages, ShareGPT, alpaca,
prompt/completion, KTO, text, or a `dataset.columns` mapping) and converts rows to the internal form;
`rows` checks that form; `checking` runs it all and says what was understood; `problems` counts what is
wrong, grouped by kind. Every check is linear in the size of the file and bounded per row (MAX_COLUMNS,
MAX_ROW_CHARS): the app runs it on untrusted uploads.
"""

from contract.datasets.checking import check_file, check_loaded, columns_of
from contract.datasets.problems import (
    EXPECTED_COLUMNS,
    FORMATS,
    MAX_COLUMNS,
    MAX_PROBLEMS,
    MAX_ROW_CHARS,
    NESTING_SHOWN,
    ROLES,
    SUFFIXES,
    CheckedDataset,
    CheckStopped,
    DatasetError,
    DatasetInvalid,
    Issue,
    LoadedRows,
    Problem,
    ProblemGroup,
    StopFlag,
)
from contract.datasets.reading import read_file, read_rows, read_with_problems
from contract.datasets.rows import (
    check_rows,
    detect_format,
    missing_columns_message,
    row_problem,
    validate_rows,
)

__all__ = [
    "EXPECTED_COLUMNS",
    "FORMATS",
    "MAX_COLUMNS",
    "MAX_PROBLEMS",
    "MAX_ROW_CHARS",
    "NESTING_SHOWN",
    "ROLES",
    "SUFFIXES",
    "CheckStopped",
    "CheckedDataset",
    "DatasetError",
    "DatasetInvalid",
    "Issue",
    "LoadedRows",
    "Problem",
    "ProblemGroup",
    "StopFlag",
    "check_file",
    "check_loaded",
    "check_rows",
    "columns_of",
    "detect_format",
    "missing_columns_message",
    "read_file",
    "read_rows",
    "read_with_problems",
    "row_problem",
    "validate_rows",
]
