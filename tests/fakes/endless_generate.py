"""A stand-in for `python -m worker.tasks.generate` that never finishes (a seam we own).

Takes the same arguments, writes its pid to RUN_DIR/endless.pid, then prints an adapter token every 50 ms
forever: tests check that the app kills it when the client goes away or the timeout passes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    (run_dir / "endless.pid").write_text(str(os.getpid()), encoding="utf-8")
    while True:
        print(json.dumps({"side": "adapter", "token": "x"}), flush=True)
        time.sleep(0.05)
