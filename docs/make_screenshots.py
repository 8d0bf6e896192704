"""Retake every screenshot under docs/screenshots/ (light and dark) by walking the browser journey.

    .venv/bin/python docs/make_screenshots.py

It runs tests/browser/test_journey.py (the real app, the real scheduler and worker, Debian chromium) with
TUNEBOARD_SCREENSHOT_DIR pointing here; the journey saves each page as NAME.png and NAME-dark.png. CI runs the
same journey without screenshots. Takes about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"


def main() -> int:
    """Run the journey with screenshots on; return pytest's exit status."""
    env = dict(os.environ, TUNEBOARD_SCREENSHOT_DIR=str(OUT))
    env.setdefault("OMP_NUM_THREADS", "1")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/browser/test_journey.py"]
    status = subprocess.call(argv, cwd=REPO, env=env)
    if status == 0:
        print(f"screenshots written to {OUT.relative_to(REPO)}/")
    else:
        print(
            "the journey failed, so some screenshots may be stale: see pytest's output above", file=sys.stderr
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
