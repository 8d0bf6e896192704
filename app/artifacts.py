"""Files a job leaves in its run directory, served safely: the adapter as a zip, the stderr tail."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path


class ArtifactError(Exception):
    """An artifact that cannot be served; the message says why and what to do."""


class ArtifactMissing(ArtifactError):
    """The artifact does not exist (yet)."""


def contained_path(root: Path, relative: str) -> Path:
    """`root / relative` resolved; refuses what ends up outside `root` (.., absolute paths, links)."""
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise ArtifactError(f"{relative!r} points outside the run directory; refusing to serve it")
    return target


def adapter_dir(run_dir: str | None, adapter_path: str | None) -> Path:
    """The adapter directory of a job, checked to lie inside its run directory."""
    if not run_dir:
        raise ArtifactMissing("this job has not started yet, so it has no adapter; wait until it succeeds")
    target = contained_path(Path(run_dir), adapter_path or "adapter")
    if not target.is_dir():
        raise ArtifactMissing(
            "the adapter does not exist yet; it is written when training finishes successfully"
        )
    return target


def zip_directory(source: Path, dest_dir: Path | None = None) -> Path:
    """Zip `source` into a temporary file and return its path (the caller deletes it).

    Every file is re-checked after resolving links: a symlink pointing outside `source` is refused
    rather than followed, so a run directory cannot be used to read arbitrary files.
    """
    base = source.resolve()
    fd, name = tempfile.mkstemp(prefix="adapter-", suffix=".zip", dir=dest_dir)
    os.close(fd)
    out = Path(name)
    try:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
                for dirname in list(dirnames):
                    if not (Path(dirpath) / dirname).resolve().is_relative_to(base):
                        raise ArtifactError(
                            f"{dirname!r} links outside the adapter directory; refusing to zip"
                        )
                for filename in sorted(filenames):
                    path = Path(dirpath) / filename
                    real = path.resolve()
                    if not real.is_relative_to(base):
                        raise ArtifactError(
                            f"{filename!r} links outside the adapter directory; refusing to zip"
                        )
                    if real.is_file():
                        zf.write(real, arcname=str(path.relative_to(base)))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def tail_lines(path: Path, max_lines: int = 200, max_bytes: int = 256 * 1024) -> str | None:
    """The last `max_lines` lines of a text file (reading at most `max_bytes` from its end), or None."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return None
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line is probably cut
    return "\n".join(lines[-max_lines:])


def stderr_tail(run_dir: str | None, max_lines: int = 200) -> str | None:
    """The tail of RUN_DIR/stderr.log, or None when there is none."""
    if not run_dir:
        return None
    return tail_lines(Path(run_dir) / "stderr.log", max_lines=max_lines)
