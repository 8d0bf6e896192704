"""Run management: rename, notes and tags on a run; archive it; delete it with its files.

Services flush; the caller commits. Deleting removes the job's rows (metrics, events, tasks, tags: the
foreign keys cascade) and its run directory, but only a directory that is provably this job's: a direct
child of DATA_DIR/runs named `job-<id>` or `job-<id>-<hex>` (app/scheduler/claim.py names them so), never
a symlink. Anything else named by the row (a remote worker's path, an edited row) is kept and reported.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.jobs.service import touch
from app.jobs.status import TERMINAL, JobStatus, TransitionError
from app.models import Job, JobTag, Task, utcnow
from app.settings import Settings

MAX_NAME = 200
MAX_NOTES = 10_000
MAX_TAGS = 16
MAX_TAG = 32
TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._:+-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOTES_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # newlines and tabs are fine in notes
DELETE_CONFIRM = "delete"  # what a delete request must carry as `confirm`
_TERMINAL_VALUES = tuple(s.value for s in TERMINAL)


class ManageError(ValueError):
    """Input a run-management request cannot take: {field: problem} (422)."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def check_name(raw: str) -> str:
    """A display name: at most 200 characters, no control characters (it is a label, never a path)."""
    name = raw.strip()
    if len(name) > MAX_NAME:
        raise ManageError({"name": f"the name has {len(name)} characters; use at most {MAX_NAME}"})
    if _CONTROL.search(name):
        raise ManageError({"name": "the name contains control characters (tabs, newlines); remove them"})
    return name


def check_notes(raw: str) -> str:
    """Free-text notes: at most 10,000 characters; newlines kept, other control characters refused."""
    notes = raw.replace("\r\n", "\n").strip()
    if len(notes) > MAX_NOTES:
        raise ManageError({"notes": f"the notes have {len(notes)} characters; use at most {MAX_NOTES}"})
    if _NOTES_CONTROL.search(notes):
        raise ManageError({"notes": "the notes contain control characters; remove them"})
    return notes


def parse_tags(raw: str | list[Any]) -> list[str]:
    """Tags from a list or a comma/space separated string: lower-cased, de-duplicated, each 1–32 of
    a-z 0-9 . _ : + - (starting with a letter or digit), at most 16."""
    items = raw if isinstance(raw, list) else re.split(r"[,\s]+", raw)
    tags: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ManageError({"tags": f"a tag must be text, got {type(item).__name__}"})
        tag = item.strip().lower()
        if not tag or tag in tags:
            continue
        if len(tag) > MAX_TAG:
            raise ManageError({"tags": f"tag {tag[:40]!r} is longer than {MAX_TAG} characters; shorten it"})
        if not TAG_PATTERN.match(tag):
            raise ManageError(
                {
                    "tags": f"tag {tag[:40]!r} may use only letters, digits and . _ : + - "
                    "(starting with a letter or digit)"
                }
            )
        tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise ManageError({"tags": f"{len(tags)} tags given; a run takes at most {MAX_TAGS}"})
    return tags


def job_tags(session: Session, job_ids: list[int]) -> dict[int, list[str]]:
    """job id → its tags (sorted), for the jobs given; one query."""
    found: dict[int, list[str]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return found
    rows = session.execute(
        select(JobTag.job_id, JobTag.tag).where(JobTag.job_id.in_(job_ids)).order_by(JobTag.tag)
    )
    for job_id, tag in rows:
        found[job_id].append(tag)
    return found


def all_tags(session: Session, *, limit: int = 200) -> list[str]:
    """Every tag in use, sorted (for the list page's filter)."""
    return list(session.scalars(select(JobTag.tag).distinct().order_by(JobTag.tag).limit(limit)))


def update_job(
    session: Session,
    *,
    job: Job,
    name: str | None = None,
    notes: str | None = None,
    tags: str | list[Any] | None = None,
) -> list[str]:
    """Change what is given of name, notes and tags (all checked before anything changes); the tags now."""
    problems: dict[str, str] = {}

    def checked(value: Any, check: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except ManageError as exc:
            problems.update(exc.problems)
            return None

    new_name: str | None = checked(name, check_name)
    new_notes: str | None = checked(notes, check_notes)
    new_tags: list[str] | None = checked(tags, parse_tags)
    if problems:
        raise ManageError(problems)
    if new_name is not None:
        job.name = new_name
    if new_notes is not None:
        job.notes = new_notes
    if new_tags is not None:
        session.execute(delete(JobTag).where(JobTag.job_id == job.id))
        session.add_all(JobTag(job_id=job.id, tag=t) for t in new_tags)
    touch(job)
    session.flush()
    return job_tags(session, [job.id])[job.id]


def archive_job(session: Session, *, job: Job, archived: bool = True) -> Job:
    """Hide a finished run from the default list (its files stay), or bring it back."""
    if archived and JobStatus(job.status) not in TERMINAL:
        raise TransitionError(
            f"job {job.id} is {job.status}; only a finished run can be archived: cancel it first"
        )
    job.archived_at = utcnow() if archived else None
    touch(job)
    session.flush()
    return job


@dataclass
class DeleteOutcome:
    """What deleting a job removed, and what it had to leave (with why)."""

    job_id: int
    removed: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": self.job_id, "removed": self.removed, "kept": self.kept}


def owned_run_dir(settings: Settings, job: Job) -> tuple[Path | None, str | None]:
    """(the job's run directory when it may be removed, None) or (None, why it is kept)."""
    if not job.run_dir:
        return None, None
    runs = settings.runs_dir.resolve()
    path = Path(job.run_dir)
    if not path.is_absolute():
        path = runs / path
    name = path.name
    if path.parent.resolve() != runs or not re.fullmatch(rf"job-{job.id}(-[0-9a-f]+)?", name):
        return None, "not a run directory of this job under the data dir's runs/; remove it by hand"
    target = runs / name
    if target.is_symlink():
        return None, "a symbolic link, not a directory the app made; remove it by hand"
    return target, None


def check_deletable(session: Session, *, job: Job) -> None:
    """Raise TransitionError (409) unless the job and everything using it has stopped."""
    if JobStatus(job.status) not in TERMINAL:
        raise TransitionError(
            f"job {job.id} is {job.status}; cancel it and wait until it has stopped, then delete it"
        )
    active_task = session.scalars(
        select(Task.kind).where(Task.job_id == job.id, Task.status.not_in(_TERMINAL_VALUES)).limit(1)
    ).first()
    if active_task is not None:
        raise TransitionError(
            f"job {job.id} has a {active_task} task running; wait for it to finish, then delete the job"
        )
    waiting = session.scalars(
        select(Job.id)
        .where(
            Job.status.not_in(_TERMINAL_VALUES),
            Job.config["init_adapter"].as_string() == f"job:{job.id}",
        )
        .limit(1)
    ).first()
    if waiting is not None:
        raise TransitionError(
            f"job {waiting} starts from this job's adapter and has not finished; "
            f"cancel job {waiting} or wait for it, then delete job {job.id}"
        )


def _task_inputs(session: Session, settings: Settings, job_id: int) -> list[Path]:
    """Task input files of this job that lie in DATA_DIR/tmp (only the app writes there)."""
    tmp = (settings.data_dir / "tmp").resolve()
    paths = []
    for raw in session.scalars(select(Task.input_path).where(Task.job_id == job_id)):
        if raw and Path(raw).parent.resolve() == tmp:
            paths.append(tmp / Path(raw).name)
    return paths


def delete_job(session: Session, *, settings: Settings, job: Job, confirm: str | None) -> DeleteOutcome:
    """Delete a stopped job: its rows, then its run directory and task inputs (before the caller commits:
    a failure to remove files rolls the rows back, and trying again finishes the job)."""
    if (confirm or "").strip().lower() != DELETE_CONFIRM:
        raise ManageError(
            {"confirm": f"deleting job {job.id} removes its files for good; send confirm={DELETE_CONFIRM}"}
        )
    check_deletable(session, job=job)
    outcome = DeleteOutcome(job_id=job.id)
    run_dir, why_kept = owned_run_dir(settings, job)
    if why_kept is not None and job.run_dir:
        outcome.kept.append({"path": job.run_dir, "reason": why_kept})
    inputs = _task_inputs(session, settings, job.id)
    job_id = job.id
    # other jobs keep their lineage as "cloned from a deleted job"
    session.execute(update(Job).where(Job.parent_job_id == job_id).values(parent_job_id=None))
    result = session.execute(
        delete(Job)
        .where(Job.id == job_id, Job.status.in_(_TERMINAL_VALUES))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise TransitionError(f"job {job_id} was resumed or removed meanwhile; reload and try again")
    session.expunge(job)
    session.flush()
    if run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir)
        outcome.removed.append(f"runs/{run_dir.name}")
    for path in inputs:
        if path.exists():
            path.unlink()
            outcome.removed.append(f"tmp/{path.name}")
    return outcome
