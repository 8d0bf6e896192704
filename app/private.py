"""What only the app's own user may read: the data dir, runs and datasets (0700), the database (0600).

Modes are set explicitly on what the app makes, rather than by changing the process umask: the umask is
process-wide (it would change every file any library or test in the process writes), while an explicit
mode says at the place of creation who may read it. A private directory also covers whatever the
training child writes beneath it (checkpoints, the spool), whatever modes those files get.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) readable by the owner only; tighten it if it already exists."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)  # mkdir's mode is narrowed by the umask and never applied to an existing one
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing, readable by the owner only; tighten it if it already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path
