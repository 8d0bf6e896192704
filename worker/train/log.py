"""The training child's one way to say something in words.

A message goes to one of two places. With the run's reporter it becomes a LOG event: spooled to
RUN_DIR/events.jsonl and shown in the job page's log (what a user of the run reads). Without one — the
reporter's own troubles, a run directory that cannot be written, the torchrun parent, uploads before and
after the run — it goes to stderr, which the launcher drains into RUN_DIR/stderr.log and the supervisor
keeps as the failure's tail (a terminal for `tuneboard train`). Never both: the standalone progress bar
shares stderr, and the dashboard already has the event.

Tracebacks (`traceback.print_exc`) and the command line's own output (`tuneboard train` printing the
adapter's path) are not log lines and do not come through here.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from contract.protocol import EventKind

Level = Literal["info", "warning", "error"]


def say(message: str, level: Level = "info", *, reporter: Any = None, step: int = 0) -> None:
    """A LOG event at `step` through `reporter` (Reporter or NullReporter), or with none a stderr line."""
    if reporter is not None:
        reporter.emit(EventKind.LOG, step, {"level": level, "message": message})
        return
    print(message, file=sys.stderr, flush=True)
