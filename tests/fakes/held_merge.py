"""A stand-in for `python -m worker.tasks.merge RUN_DIR --config C` that runs until the test lets it finish.

Says "running" in RUN_DIR/merge.json with its pid (as the real export does), then waits for RUN_DIR/release
to appear; then writes RUN_DIR/merged/, says "succeeded" and exits 0. Tests use it to hold a merge open
across an app restart. It notes the GPUs it was given in RUN_DIR/held-merge-env.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from contract.tasks import MERGED_DIR, write_merge_status

if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    gpus = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    (run_dir / "held-merge-env.json").write_text(json.dumps(gpus), encoding="utf-8")
    write_merge_status(run_dir, state="running", stage="merging", progress=0.5, message="", pid=os.getpid())
    deadline = time.monotonic() + 120  # never outlive a test run by much
    while not (run_dir / "release").exists():
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
    (run_dir / MERGED_DIR).mkdir(exist_ok=True)
    write_merge_status(
        run_dir, state="succeeded", stage="done", progress=1.0, message="merged", pid=os.getpid()
    )
