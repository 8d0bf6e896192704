"""`python -m worker.train RUN_DIR`: the training child the app's launchers start.

Reads RUN_DIR/config.json (and RUN_DIR/job.json when reporting to an app), trains, writes
RUN_DIR/outcome.json last, and exits with a worker.protocol.ExitCode.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse RUN_DIR from argv and run the job in it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(
            "usage: python -m worker.train RUN_DIR  (RUN_DIR holds config.json, optionally job.json)",
            file=sys.stderr,
        )
        return 2
    from worker.train.pipeline import run_training

    return int(run_training(Path(args[0])))


if __name__ == "__main__":
    sys.exit(main())
