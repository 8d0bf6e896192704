"""A stand-in for `python -m worker.export RUN_DIR --config C --format F --quant Q --base B` that runs until
the test creates RUN_DIR/release, then publishes RUN_DIR/exports/NAME/ with one file and says succeeded."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from contract.tasks import EXPORTS_DIR, export_name_of, write_export_status

if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    name = export_name_of(sys.argv[2:]) or "merged"
    write_export_status(
        run_dir, name, state="running", stage="merging", progress=0.5, message="", pid=os.getpid()
    )
    deadline = time.monotonic() + 120  # never outlive a test run by much
    while not (run_dir / "release").exists():
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
    folder = run_dir / EXPORTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("held export\n", encoding="utf-8")
    write_export_status(
        run_dir, name, state="succeeded", stage="done", progress=1.0, message="done", pid=os.getpid()
    )
