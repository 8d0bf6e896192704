"""Files a job leaves in its run directory, served safely: the adapter as a zip, the stderr tail,
complete checkpoints and the merged export as zips, and every stored metric point as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from app.auth.redact import redact_secrets
from app.models import MetricPoint
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, FULL_LOG_NAME, RunDir
from contract.tasks import MERGED_DIR


class ArtifactError(Exception):
    """An artifact that cannot be served; the message says why and what to do."""


class ArtifactMissing(ArtifactError):
    """The artifact does not exist (yet)."""


class ArtifactIncomplete(ArtifactError):
    """The artifact exists but was not finished (an interrupted checkpoint save)."""


def plain_relative_path(relative: str) -> str:
    """`relative` if it is a plain relative path (no '', '.', '..', '/' first, '\\'), else ArtifactError.

    Stricter than normalising: a worker names its files exactly, so anything that needs normalising
    (`./adapter`, `a//b`) is refused rather than guessed at, and '.' can never name the run directory itself.
    """
    parts = relative.split("/")
    if not relative or "\\" in relative or "\x00" in relative or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(f"{relative!r} is not a plain relative path inside the run directory")
    return relative


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
    if target == Path(run_dir).resolve():
        # the run directory also holds job.json (the worker's token) and config.json: never zip it whole
        raise ArtifactError("the adapter path names the whole run directory; refusing to zip it")
    if not target.is_dir():
        raise ArtifactMissing(
            "the adapter does not exist yet; it is written when training finishes successfully"
        )
    return target


def zip_members(source: Path) -> list[tuple[Path, str]]:
    """(real file, name in the archive) for every file under `source`, checked before anything is sent.

    Every path is re-checked after resolving links: a symlink pointing outside `source` is refused
    rather than followed, so a run directory cannot be used to read arbitrary files.
    """
    base = source.resolve()
    members: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for dirname in sorted(dirnames):
            if not (Path(dirpath) / dirname).resolve().is_relative_to(base):
                raise ArtifactError(f"{dirname!r} links outside {source.name}/; refusing to zip")
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            real = path.resolve()
            if not real.is_relative_to(base):
                raise ArtifactError(f"{filename!r} links outside {source.name}/; refusing to zip")
            if real.is_file():
                members.append((real, str(path.relative_to(base))))
    return members


def zip_directory(source: Path, dest_dir: Path | None = None) -> Path:
    """Zip `source` into a temporary file and return its path (the caller deletes it)."""
    members = zip_members(source)
    fd, name = tempfile.mkstemp(prefix="adapter-", suffix=".zip", dir=dest_dir)
    os.close(fd)
    out = Path(name)
    try:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for real, arcname in members:
                zf.write(real, arcname=arcname)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


class _ZipSink:
    """A write-only, unseekable file for zipfile that hands out what was written (streamed zips)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset  # zipfile needs offsets for the central directory, never a seek

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def stream_zip(members: list[tuple[Path, str]], chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
    """A zip of `members` (from zip_members) as bytes while it is built: no temporary file, and a
    multi-GB model starts downloading at once. Stored, not deflated: weights barely compress."""
    sink = _ZipSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:  # type: ignore[call-overload]
        for real, arcname in members:
            info = zipfile.ZipInfo.from_file(real, arcname)
            info.compress_type = zipfile.ZIP_STORED
            with real.open("rb") as src, zf.open(info, "w", force_zip64=True) as dest:
                while chunk := src.read(chunk_bytes):
                    dest.write(chunk)
                    data = sink.drain()
                    if data:
                        yield data
            data = sink.drain()
            if data:
                yield data
    yield sink.drain()


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


def log_tail(run_dir: str | None, name: str, max_lines: int = 200) -> str | None:
    """The tail of RUN_DIR/<name> (a log the run writes), secrets redacted, or None when there is none."""
    if not run_dir:
        return None
    try:
        path = contained_path(Path(run_dir), name)
    except ArtifactError:
        # the worker replaced its log with a link elsewhere: never serve the file it points to
        return f"({name} links outside the run directory, so it is not shown)"
    return redact_secrets(tail_lines(path, max_lines=max_lines))


def stderr_tail(run_dir: str | None, max_lines: int = 200) -> str | None:
    """The tail of RUN_DIR/stderr.log (the child's stdout and stderr), or None when there is none."""
    return log_tail(run_dir, "stderr.log", max_lines)


def full_log_tail(run_dir: str | None, max_lines: int = 200) -> str | None:
    """The tail of RUN_DIR/train.log (messages, library warnings, tracebacks), or None when there is none."""
    return log_tail(run_dir, FULL_LOG_NAME, max_lines)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and the merged export

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d{1,12})")


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def list_checkpoints(run_dir: str | None) -> list[dict[str, Any]]:
    """Every checkpoint directory of a run, oldest first: {"name", "step", "complete", "size_bytes"}."""
    if not run_dir:
        return []
    root = RunDir(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    found: list[dict[str, Any]] = []
    for child in root.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(child.name)
        if match is None or not child.is_dir() or child.is_symlink():
            continue
        complete = (child / CHECKPOINT_COMPLETE_MARKER).is_file()
        found.append(
            {
                "name": child.name,
                "step": int(match.group(1)),
                "complete": complete,
                "size_bytes": _dir_size(child),
            }
        )
    return sorted(found, key=lambda c: c["step"])


def checkpoint_dir(run_dir: str | None, name: str) -> Path:
    """The complete checkpoint `name` of a run; ArtifactMissing / ArtifactIncomplete say why not."""
    if _CHECKPOINT_NAME.fullmatch(name) is None:
        raise ArtifactMissing(f"{name!r} is not a checkpoint name; checkpoints are named checkpoint-<step>")
    if not run_dir:
        raise ArtifactMissing("this job has not started yet, so it has no checkpoints")
    target = contained_path(RunDir(Path(run_dir)).checkpoints, name)
    if not target.is_dir():
        raise ArtifactMissing(f"there is no {name}; GET /api/jobs/<id>/checkpoints lists the complete ones")
    if not (target / CHECKPOINT_COMPLETE_MARKER).is_file():
        raise ArtifactIncomplete(
            f"{name} is incomplete: its {CHECKPOINT_COMPLETE_MARKER} marker is missing, so the save was "
            "interrupted (or is still being written) and the files may be half-written; download a complete "
            "checkpoint instead (GET /api/jobs/<id>/checkpoints lists them)"
        )
    return target


def merged_dir(run_dir: str | None) -> Path:
    """RUN_DIR/merged once the merged export finished (it is renamed into place only when complete)."""
    if not run_dir:
        raise ArtifactMissing("this job has not started yet, so it has no merged model")
    target = contained_path(Path(run_dir), MERGED_DIR)
    if not target.is_dir():
        raise ArtifactMissing(
            "there is no merged model yet; start the export (POST /api/jobs/<id>/export-merged) and "
            "download it when it has finished"
        )
    return target


# ---------------------------------------------------------------------------------------------------------
# Metric exports: every stored point (no downsampling), streamed in chunks of short sessions

_metric = MetricPoint.__table__
EXPORT_CHUNK_ROWS = 20_000


def metric_export_keys(session: Session, job_id: int) -> list[str]:
    """The metric keys of a job, alphabetically."""
    stmt = select(_metric.c.key).where(_metric.c.job_id == job_id).distinct().order_by(_metric.c.key)
    return [row[0] for row in session.execute(stmt)]


def _value(value: float | None, nonfinite: str | None) -> float | str | None:
    """A stored value as exported: the float, or 'nan' / 'inf' / '-inf' for non-finite ones."""
    if value is None:
        return nonfinite  # None only when the worker sent no value at all
    return value


def _metric_rows(
    factory: sessionmaker[Session], job_id: int, *, by_step: bool, chunk_rows: int
) -> Iterator[tuple[str, int, float | str | None]]:
    """(key, step, value) for every point, ordered by (step, key) or (key, step), one session per chunk.

    Keyset pagination: no session or cursor stays open while the response is sent to a slow client.
    """
    order = (_metric.c.step, _metric.c.key) if by_step else (_metric.c.key, _metric.c.step)
    last: tuple[Any, Any] | None = None
    while True:
        stmt = select(_metric.c.key, _metric.c.step, _metric.c.value, _metric.c.nonfinite).where(
            _metric.c.job_id == job_id
        )
        if last is not None:
            stmt = stmt.where(tuple_(*order) > tuple_(*last))
        stmt = stmt.order_by(*order).limit(chunk_rows)
        with factory() as session:
            rows = list(session.execute(stmt))
        for key, step, value, nonfinite in rows:
            yield key, step, _value(value, nonfinite)
        if len(rows) < chunk_rows:
            return
        tail = rows[-1]
        last = (tail.step, tail.key) if by_step else (tail.key, tail.step)


def _csv_cell(value: float | str | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def metrics_csv(
    factory: sessionmaker[Session], job_id: int, *, chunk_rows: int = EXPORT_CHUNK_ROWS
) -> Iterator[str]:
    """CSV text in pieces: a `step` column and one column per key; empty where a key has no point."""
    with factory() as session:
        keys = metric_export_keys(session, job_id)
    column = {key: i for i, key in enumerate(keys)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", *keys])
    current: int | None = None
    cells: list[str] = []
    for key, step, value in _metric_rows(factory, job_id, by_step=True, chunk_rows=chunk_rows):
        if step != current:
            if current is not None:
                writer.writerow([current, *cells])
            current, cells = step, [""] * len(keys)
        if key in column:  # a key that appeared after the header was written: the next export has it
            cells[column[key]] = _csv_cell(value)
        if buf.tell() > 64 * 1024:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    if current is not None:
        writer.writerow([current, *cells])
    yield buf.getvalue()


def metrics_json(
    factory: sessionmaker[Session], job_id: int, *, chunk_rows: int = EXPORT_CHUNK_ROWS
) -> Iterator[str]:
    """JSON in pieces: {"job_id", "series": {key: [[step, value], ...]}}; non-finite values as strings."""
    yield '{"job_id": ' + json.dumps(job_id) + ', "series": {'
    current: str | None = None
    first_point = True
    pieces: list[str] = []
    size = 0
    for key, step, value in _metric_rows(factory, job_id, by_step=False, chunk_rows=chunk_rows):
        if key != current:
            if current is not None:
                pieces.append("], ")
            pieces.append(json.dumps(key) + ": [")
            current, first_point = key, True
        piece = ("" if first_point else ", ") + json.dumps([step, value], allow_nan=False)
        first_point = False
        pieces.append(piece)
        size += len(piece)
        if size > 64 * 1024:
            yield "".join(pieces)
            pieces, size = [], 0
    if current is not None:
        pieces.append("]")
    pieces.append("}}")
    yield "".join(pieces)
