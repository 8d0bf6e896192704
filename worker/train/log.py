"""The training child's one way to say something in words, and where the libraries' chatter goes.

A message goes to one of two places. With the run's reporter it becomes a LOG event: spooled to
RUN_DIR/events.jsonl and shown in the job page's log (what a user of the run reads). Without one — the
reporter's own troubles, a run directory that cannot be written, the torchrun parent, uploads before and
after the run — it goes to stderr, which the launcher drains into RUN_DIR/stderr.log and the supervisor
keeps as the failure's tail (a terminal for `tuneboard train`). Never both: the standalone progress bar
shares stderr, and the dashboard already has the event.

The run's full log, RUN_DIR/train.log (`library_output_to_log`), takes what means nothing to a user on a
terminal: the libraries' warnings (bitsandbytes' "Failed to load CPU gemm_4bit_forward", deprecation and
future warnings, transformers' logging), the tracebacks of expected failures (a model not found offline),
and a copy of every message said here. An expected failure then prints one plain line and this file's path.

The command line's own output (`tuneboard train` printing the adapter's path) is not a log line and does
not come through here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from contract.protocol import EventKind
from contract.rundir import FULL_LOG_NAME

Level = Literal["info", "warning", "error"]

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# said messages are copied to the full log through this logger; it never reaches the root logger, and its
# NullHandler keeps logging's last-resort handler from printing them on stderr a second time
_COPY = logging.getLogger("tuneboard.train")
_COPY.propagate = False
_COPY.setLevel(logging.INFO)
_COPY.addHandler(logging.NullHandler())


def full_log_path(run_root: Path) -> Path:
    """RUN_DIR/train.log: library warnings, tracebacks, and a copy of every message said."""
    return Path(run_root) / FULL_LOG_NAME


def say(message: str, level: Level = "info", *, reporter: Any = None, step: int = 0) -> None:
    """A LOG event at `step` through `reporter` (Reporter or NullReporter), or with none a stderr line."""
    _COPY.log(_LEVELS.get(level, logging.INFO), message)
    if reporter is not None:
        reporter.emit(EventKind.LOG, step, {"level": level, "message": message})
        return
    print(message, file=sys.stderr, flush=True)


def log_text(text: str) -> None:
    """Write `text` (a traceback) to the full log only, when one is open."""
    _COPY.error(text.rstrip("\n"))


@contextmanager
def library_output_to_log(run_root: Path, *, progress_bars: bool = False) -> Iterator[Path]:
    """While inside, library warnings and logging go to RUN_DIR/train.log instead of the terminal.

    Python warnings are captured into logging, the libraries' own stderr handlers (transformers) are
    swapped for propagation to the root logger, which gains a handler on the file. `progress_bars` False
    also hides the libraries' download and weight-loading bars (Tuneboard's own training bar stays).
    Everything is put back on exit: tests and other in-process callers run this too.
    """
    path = full_log_path(run_root)
    handler: logging.Handler
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError:  # an unwritable run directory is reported elsewhere; keep the terminal as it was
        yield path
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    _COPY.addHandler(handler)
    logging.captureWarnings(True)
    restore = [_quiet_transformers(progress_bars), _quiet_hub(progress_bars), _quiet_datasets(progress_bars)]
    try:
        yield path
    finally:
        for undo in reversed(restore):
            undo()
        logging.captureWarnings(False)
        _COPY.removeHandler(handler)
        root.removeHandler(handler)
        handler.close()


def _nothing() -> None:
    return None


def _quiet_transformers(progress_bars: bool) -> Any:
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        return _nothing
    bars_were_on = tlog.is_progress_bar_enabled()
    tlog.disable_default_handler()
    tlog.enable_propagation()
    if not progress_bars:
        tlog.disable_progress_bar()

    def undo() -> None:
        tlog.disable_propagation()
        tlog.enable_default_handler()
        if bars_were_on:
            tlog.enable_progress_bar()

    return undo


def _quiet_hub(progress_bars: bool) -> Any:
    try:
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )
    except ImportError:
        return _nothing
    if progress_bars or are_progress_bars_disabled():
        return _nothing
    disable_progress_bars()
    return enable_progress_bars


def _quiet_datasets(progress_bars: bool) -> Any:
    try:
        import datasets
    except ImportError:
        return _nothing
    # its library logger prints on stderr through its own handler (and propagates too): lift the handler
    lib = logging.getLogger("datasets")
    streams = [h for h in lib.handlers if type(h) is logging.StreamHandler]
    for h in streams:
        lib.removeHandler(h)
    bars_were_on = datasets.is_progress_bar_enabled()
    if bars_were_on and not progress_bars:
        datasets.disable_progress_bars()

    def undo() -> None:
        for h in streams:
            lib.addHandler(h)
        if bars_were_on and not progress_bars:
            datasets.enable_progress_bars()

    return undo
