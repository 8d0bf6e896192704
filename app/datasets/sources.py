"""Which local files a job's dataset.source may name: only those under settings.dataset_root_dirs.

Without this, a job naming any path was a probe of the server's disk: its failure said whether the file
existed and, if it did, its column names. The app refuses such a source when the job is created (every
way of creating one goes through app.jobs.service.create_job), so the training process never gets it.
The refusal says the same for a file that exists and one that does not.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.datasets.service import UPLOAD_PREFIX
from app.settings import Settings
from contract.catalog import PRESET_PREFIX
from contract.config import ConfigError, JobConfig

SETTINGS_KEY = "settings"  # Session.info key under which the app's sessions carry its settings


def is_local_path(source: str) -> bool:
    """True when dataset.source names a file rather than an upload or a preset."""
    return not source.startswith((UPLOAD_PREFIX, PRESET_PREFIX))


def inside_roots(source: str, roots: list[Path]) -> bool:
    """True when `source` (relative: to the working directory, as the training process reads it), with
    every symlink followed, lies under one of `roots`."""
    try:
        resolved = Path(source).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unknown ~user, a NUL byte
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def check_dataset_source(settings: Settings, config: JobConfig) -> None:
    """Refuse (ConfigError on dataset.source) a local file outside the dataset roots; exists or not."""
    source = config.dataset.source
    if is_local_path(source) and not inside_roots(source, settings.dataset_root_dirs):
        raise ConfigError(
            {
                "dataset.source": f"{source!r} is not in a directory jobs may read; upload the file "
                "(POST /api/datasets, then use upload:<id>) or ask the operator to add its directory to "
                "TUNEBOARD_DATASET_ROOTS"
            }
        )


def check_job_source(session: Session, config: JobConfig) -> None:
    """check_dataset_source with the settings the app's sessions carry (none: not the app's, no check)."""
    settings = session.info.get(SETTINGS_KEY)
    if isinstance(settings, Settings):
        check_dataset_source(settings, config)
