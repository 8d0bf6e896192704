"""Uploaded datasets: check, store once by content, list alongside the generated presets.

A dataset lives in DATA_DIR/datasets/<id>/data.jsonl, where <id> is a prefix of the sha256 of the bytes
as uploaded; a job names it `upload:<id>` and the worker finds it through TUNEBOARD_DATASETS_DIR (see
worker/train/data.py's resolve_source). JSONL uploads are kept byte for byte, so the lines the checker
named are the lines of the stored file; CSV and Parquet are stored as the JSONL of their checked rows.
Files are written before the row is added, so a row never points at a missing file. Uploads are other
people's data: the datasets directory and everything in it is readable by the app's user only (0700/0600).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.datasets.upload import PRIVATE_FILE, ReceivedUpload, make_private_dir
from app.jobs.schemas import iso
from app.models import Dataset, utcnow
from app.settings import Settings
from contract.catalog import PRESET_DATASETS, PRESET_PREFIX
from contract.datasets import (
    SUFFIXES,
    CheckedDataset,
    CheckStopped,
    DatasetError,
    StopFlag,
    check_file,
)
from contract.datasets.mapping import columns_from_text

UPLOAD_PREFIX = "upload:"
DATA_FILE = "data.jsonl"
INTAKE_FILE = "intake.json"  # what was understood at upload: layout, conversion, columns used and ignored
COLUMNS_FIELD = "columns"  # the upload form's optional dataset.columns mapping (JSON/YAML, or LLaMA-Factory)
ID_LENGTHS = (12, 20, 64)  # a shorter id is taken only when no other file already has it
UPLOAD_TMP_DIR = "tmp"  # under DATA_DIR: where uploads stream to (upload-*.part)
STAGING_PREFIX = ".staging-"
STALE_PREFIX = ".stale-"
# Leftovers older than this are a crash's; a younger one may be another app process's upload in progress
# (several app processes may share one data dir on PostgreSQL).
LEFTOVER_AGE_S = 600.0


class DatasetNotFound(LookupError):
    """No dataset with that id (or preset name); the message says where to find the list."""


class DatasetSummary(BaseModel):
    """One entry of GET /api/datasets: an upload (kind "upload") or a generated preset (kind "preset")."""

    id: str
    source: str  # what a job's dataset.source says: upload:<id> or preset:<name>
    kind: str
    name: str
    description: str | None = None
    filename: str | None = None
    format: str
    rows: int | None = None  # presets generate dataset.num_rows rows
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: str | None = None
    intake: dict[str, Any] | None = None  # layout, conversion, columns used/ignored/held back (uploads)


def upload_summary(d: Dataset) -> dict[str, Any]:
    """The API shape of an uploaded dataset."""
    return {
        "id": d.id,
        "source": UPLOAD_PREFIX + d.id,
        "kind": "upload",
        "name": d.name,
        "description": None,
        "filename": d.filename,
        "format": d.format,
        "rows": d.rows,
        "size_bytes": d.size_bytes,
        "sha256": d.sha256,
        "created_at": iso(d.created_at),
    }


def preset_summaries() -> list[dict[str, Any]]:
    """The generated datasets the worker builds itself (contract.catalog.PRESET_DATASETS)."""
    return [
        {
            "id": PRESET_PREFIX + p.name,
            "source": PRESET_PREFIX + p.name,
            "kind": "preset",
            "name": p.name,
            "description": p.description,
            "filename": None,
            "format": p.format,
            "rows": None,
            "size_bytes": None,
            "sha256": None,
            "created_at": None,
        }
        for p in PRESET_DATASETS.values()
    ]


def list_uploads(session: Session, *, limit: int = 500) -> list[Dataset]:
    """Uploaded datasets, newest first."""
    stmt = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit)
    return list(session.scalars(stmt))


def list_summaries(session: Session) -> list[dict[str, Any]]:
    """Uploads (newest first), then the presets."""
    return [upload_summary(d) for d in list_uploads(session)] + preset_summaries()


def get_summary(session: Session, ref: str) -> dict[str, Any]:
    """One dataset by id, upload:<id> or preset:<name> (DatasetNotFound otherwise)."""
    if ref.startswith(PRESET_PREFIX):
        for entry in preset_summaries():
            if entry["id"] == ref:
                return entry
        known = ", ".join(PRESET_PREFIX + n for n in PRESET_DATASETS)
        raise DatasetNotFound(f"there is no preset dataset {ref!r}; the presets are {known}")
    return upload_summary(get_upload(session, ref))


def get_upload(session: Session, ref: str) -> Dataset:
    """The uploaded dataset `ref` (an id or upload:<id>), or DatasetNotFound."""
    dataset_id = ref.removeprefix(UPLOAD_PREFIX)
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetNotFound(f"there is no uploaded dataset {dataset_id!r}; GET /api/datasets lists them")
    return dataset


def dataset_choices(session: Session) -> list[tuple[str, str]]:
    """(dataset.source value, description) for the new-job form: uploads first, then presets."""
    uploads = [
        (UPLOAD_PREFIX + d.id, f"{d.name} ({d.rows} rows, {d.format}, uploaded {d.filename})")
        for d in list_uploads(session, limit=200)
    ]
    return uploads + [(p["source"], p["description"] or "") for p in preset_summaries()]


def data_file(settings: Settings, dataset_id: str) -> Path:
    """DATA_DIR/datasets/<id>/data.jsonl, the file the worker reads for upload:<id>."""
    return settings.datasets_dir / dataset_id / DATA_FILE


# ---------------------------------------------------------------------------------------------- uploading


def upload_tmp_dir(settings: Settings) -> Path:
    """DATA_DIR/tmp, where uploads stream to."""
    return settings.data_dir / UPLOAD_TMP_DIR


def remove_upload_leftovers(settings: Settings, *, older_than_s: float = LEFTOVER_AGE_S) -> int:
    """Remove what a crash left of uploads (tmp/upload-*.part, datasets/.staging-*, datasets/.stale-*) and
    make their directories private again; called at start-up. Returns how many were removed."""
    cutoff = time.time() - older_than_s
    removed = 0
    candidates: list[Path] = []
    for root, pattern in (
        (upload_tmp_dir(settings), "upload-*.part"),
        (settings.datasets_dir, STAGING_PREFIX + "*"),
        (settings.datasets_dir, STALE_PREFIX + "*"),
    ):
        if root.is_dir():
            make_private_dir(root)
            candidates += root.glob(pattern)
    for path in candidates:
        try:
            if path.lstat().st_mtime >= cutoff:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:
            continue  # removed meanwhile by whoever owned it
    return removed


def check_upload(upload: ReceivedUpload, stop: StopFlag | None = None) -> CheckedDataset:
    """Check the uploaded file by its name's suffix, with the form's `columns` mapping if any (DatasetInvalid
    lists the bad lines; CheckStopped when `stop` is set meanwhile).

    A mapped upload is stored as its converted rows, so its identity is the bytes and the mapping: the
    same file mapped differently is another dataset (`upload.sha256` is updated to say so)."""
    shown = Path(upload.filename).name or "upload"
    suffix = Path(shown).suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(
            f"{shown}: unsupported file type {suffix or '(none)'!r}; upload .jsonl, .json, .csv, .parquet "
            "or .txt"
        )
    mapping = columns_from_text(upload.fields.get(COLUMNS_FIELD, ""))
    checked = check_file(
        upload.path,
        suffix=suffix,
        name=shown,
        stop=stop,
        columns=mapping,
        accept_preference=True,  # the method is chosen with the job; the intake says which fit
        keep_source=True,  # stored as the file's rows: every method reads them its own way
    )
    if mapping is not None:
        canonical = json.dumps(checked.intake.get("mapping"), sort_keys=True)
        upload.sha256 = hashlib.sha256(f"{upload.sha256}\n{canonical}".encode()).hexdigest()
    return checked


def read_intake(settings: Settings, dataset_id: str) -> dict[str, Any] | None:
    """What was understood of an upload (None for datasets stored before this was recorded)."""
    try:
        value = json.loads((settings.datasets_dir / dataset_id / INTAKE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def new_staging_dir(settings: Settings) -> Path:
    """A new private directory under DATA_DIR/datasets where `stage_files` writes; `store_upload` renames it
    into place. The caller removes it when it is not placed."""
    make_private_dir(settings.datasets_dir)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=settings.datasets_dir))


def stage_files(
    upload: ReceivedUpload, checked: CheckedDataset, staging: Path, stop: StopFlag | None = None
) -> None:
    """Write data.jsonl and intake.json (0600) into `staging` (no database involved, so the slow part
    happens before the write lock is taken). data.jsonl holds the file's own rows (a JSONL upload byte for
    byte); the worker converts them as the checker did, with the mapping intake.json records."""
    intake = os.open(staging / INTAKE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(intake, "w", encoding="utf-8") as fh:
        json.dump(checked.intake, fh, ensure_ascii=False)
    target = staging / DATA_FILE
    if Path(upload.filename).suffix.lower() == ".jsonl":
        # the worker converts it again the same way (contract.datasets, with intake.json's mapping)
        # byte for byte, so the checker's line numbers stay true; a move, not a copy (same file system)
        shutil.move(upload.path, target)
        os.chmod(target, PRIVATE_FILE)  # already 0600 (mkstemp); said again in case that ever changes
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for i, row in enumerate(checked.rows):
            if stop is not None and i % 1000 == 0 and stop.is_set():
                raise CheckStopped
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _place(settings: Settings, staging: Path, dataset_id: str) -> None:
    """Rename the staging directory to DATA_DIR/datasets/<id> unless a complete copy is already there.

    Safe against concurrent uploads of the same bytes (PostgreSQL serialises nothing here): a directory that
    came from a rename always holds data.jsonl, so only one without it (left by an older crash) is cleared,
    and it is first moved aside atomically, never deleted in place where another upload may have just landed.
    """
    final = settings.datasets_dir / dataset_id
    for _attempt in range(5):
        try:
            os.rename(staging, final)  # atomic: the worker sees all of data.jsonl or nothing
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if (final / DATA_FILE).is_file():
            return  # the same bytes were stored before, or by a concurrent upload (content-addressed)
        aside = Path(tempfile.mkdtemp(prefix=STALE_PREFIX, dir=settings.datasets_dir))
        try:
            os.rename(final, aside / dataset_id)
        except FileNotFoundError:
            pass  # another upload moved it aside first
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    raise DatasetError(
        f"could not place dataset {dataset_id} under {settings.datasets_dir.name}/: the directory keeps "
        "changing under concurrent uploads; upload the file again"
    )


def _free_id(session: Session, sha256: str) -> str:
    for length in ID_LENGTHS:
        candidate = sha256[:length]
        taken = session.get(Dataset, candidate)
        if taken is None or taken.sha256 == sha256:
            return candidate
    return sha256


def _by_sha(session: Session, sha256: str) -> Dataset | None:
    return session.scalars(select(Dataset).where(Dataset.sha256 == sha256)).first()


def store_upload(
    session: Session,
    *,
    settings: Settings,
    upload: ReceivedUpload,
    checked: CheckedDataset,
    staging: Path,
    name: str = "",
) -> tuple[Dataset, bool]:
    """Store a checked, staged upload once: (dataset, True) when new, (the existing one, False) for known
    bytes. The staging directory is used or removed."""
    try:
        existing = _by_sha(session, upload.sha256)
        dataset_id = existing.id if existing is not None else _free_id(session, upload.sha256)
        _place(settings, staging, dataset_id)  # also restores the files of a known dataset removed by hand
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if existing is not None:
        return existing, False
    display = (name.strip() or Path(upload.filename).stem or dataset_id)[:200]
    dataset = Dataset(
        id=dataset_id,
        name=display,
        filename=Path(upload.filename).name[:255],
        format=checked.format,
        rows=int(checked.intake.get("rows", len(checked.rows))),
        size_bytes=upload.size,
        sha256=upload.sha256,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():  # a concurrent upload of the same bytes may insert first
            session.add(dataset)
    except IntegrityError:
        winner = _by_sha(session, upload.sha256)
        if winner is None:
            raise
        return winner, False
    return dataset, True


def problems_payload(exc: DatasetError, *, filename: str) -> dict[str, Any]:
    """The 422 body: {"detail", "problems": [{"line", "message", "where", "kind"}], "groups": [{"kind",
    "count", "first_lines", "example"}], "total"}; total counts every bad row."""
    from contract.datasets import DatasetInvalid

    if isinstance(exc, DatasetInvalid):
        return {
            "detail": f"{Path(filename).name}: {exc.summary()}; nothing was stored. Fix them and upload "
            "again",
            "problems": [p.as_dict() for p in exc.problems],
            "groups": [g.as_dict() for g in exc.groups],
            "total": exc.total,
        }
    return {"detail": f"{exc}; nothing was stored", "problems": [], "groups": [], "total": 0}
