"""A run directory belongs to exactly one job, forever: ids that start again never reach old checkpoints."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory
from app.jobs import service
from app.jobs.status import JobStatus
from app.migrate import upgrade
from app.models import Job
from app.scheduler.claim import ClaimedJob, RunDirNotOwned, claim_next_job, prepare_run_dir
from app.scheduler.gpus import discover_slots
from app.settings import Settings
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, RunDir


def _claim(kit, settings: Settings) -> ClaimedJob:  # type: ignore[no-untyped-def]
    claimed = claim_next_job(kit.factory, settings=settings, slots=discover_slots(settings))
    assert claimed is not None
    return claimed


def _plant_final_checkpoint(run: RunDir, step: int = 20) -> Path:
    """What a finished job leaves behind: a complete checkpoint a resume would continue from."""
    ckpt = run.checkpoints / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / CHECKPOINT_COMPLETE_MARKER).write_text(str(step))
    return ckpt


def _fresh_database(settings: Settings) -> sessionmaker[Session]:
    """Remove tuneboard.db and migrate a new one on the same data dir (lost, replaced or moved database)."""
    db = settings.data_dir / "tuneboard.db"
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    upgrade(settings.sqlalchemy_url)
    return make_session_factory(make_engine(settings.sqlalchemy_url))


def test_a_job_of_a_new_database_never_lands_in_the_run_directory_of_an_old_job_with_its_id(
    kit, settings: Settings
) -> None:
    old_id = kit.queue("sleep=0.1")
    old = _claim(kit, settings)
    old_run = prepare_run_dir(old, app_url=settings.app_url)
    _plant_final_checkpoint(old_run)
    kit.factory.kw["bind"].dispose()

    kit.factory = _fresh_database(settings)
    new_id = kit.queue("sleep=0.1")
    assert new_id == old_id  # the id starts again: only the directory name can keep them apart
    new = _claim(kit, settings)
    new_run = prepare_run_dir(new, app_url=settings.app_url)

    assert new_run.root != old_run.root
    assert sorted(p.name for p in new_run.root.iterdir()) == ["config.json", "job.json", "owner.json"]
    assert (old_run.checkpoints / "checkpoint-20" / CHECKPOINT_COMPLETE_MARKER).is_file()  # left alone
    kit.factory.kw["bind"].dispose()


def test_the_launched_worker_of_a_first_attempt_runs_in_a_directory_of_its_own(kit) -> None:  # type: ignore[no-untyped-def]
    first = kit.queue("sleep=0.1", gpus=1)
    second = kit.queue("sleep=0.1", gpus=1)
    assert kit.supervisor.launch_ready() == [first, second]
    argv = {job_id: kit.env(job_id)["argv"] for job_id in (first, second)}
    dirs = {job_id: kit.job(job_id).run_dir for job_id in (first, second)}
    assert dirs[first] != dirs[second]
    for job_id in (first, second):
        assert argv[job_id][-1] == dirs[job_id]
        assert Path(dirs[job_id]).name.startswith(f"job-{job_id}-")


def test_a_resumed_job_continues_in_its_own_run_directory_with_its_checkpoints(
    kit, settings: Settings
) -> None:
    job_id = kit.queue("sleep=0.1")
    first = _claim(kit, settings)
    run = prepare_run_dir(first, app_url=settings.app_url)
    _plant_final_checkpoint(run, step=10)
    with kit.factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        service.transition(session, job=job, to=JobStatus.FAILED, reason="worker lost")
        service.transition(session, job=job, to=JobStatus.QUEUED)
        session.commit()

    again = _claim(kit, settings)
    resumed = prepare_run_dir(again, app_url=settings.app_url)

    assert (again.attempt, again.run_dir) == (2, first.run_dir)
    assert (resumed.checkpoints / "checkpoint-10" / CHECKPOINT_COMPLETE_MARKER).is_file()


def test_a_first_attempt_refuses_a_directory_that_already_exists(tmp_path: Path) -> None:
    taken = RunDir(tmp_path / "job-1-0123456789ab")
    _plant_final_checkpoint(taken)
    claimed = ClaimedJob(job_id=1, run_dir=taken.root, gpus=(), attempt=1, token="t", config={})
    with pytest.raises(RunDirNotOwned, match="never reuses"):
        prepare_run_dir(claimed, app_url="http://x")
    assert not taken.job.exists()  # nothing of the new job was written into it


def test_a_resume_refuses_a_run_directory_whose_owner_record_names_another_job(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "job-3-0123456789ab")
    _plant_final_checkpoint(run)
    run.owner.write_text(json.dumps({"job_id": 9, "run": "job-9-ffffffffffff"}))
    claimed = ClaimedJob(job_id=3, run_dir=run.root, gpus=(), attempt=2, token="t", config={})
    with pytest.raises(RunDirNotOwned, match="belongs to job 9"):
        prepare_run_dir(claimed, app_url="http://x")


def test_the_supervisor_fails_a_job_whose_run_directory_is_not_its_own_with_the_reason(
    kit, settings: Settings
) -> None:
    job_id = kit.queue("sleep=0.1")
    stranger = RunDir(settings.runs_dir / "job-77-0123456789ab")
    _plant_final_checkpoint(stranger)
    stranger.owner.write_text(json.dumps({"job_id": 77, "run": stranger.root.name}))
    kit.set(job_id, run_dir=str(stranger.root), attempt=1, status=JobStatus.FAILED.value)
    kit.set(job_id, status=JobStatus.QUEUED.value)

    kit.supervisor.launch_ready()

    job = kit.job(job_id)
    assert job.status == JobStatus.FAILED
    assert "belongs to job 77" in (job.failure_reason or "")
    assert not stranger.job.exists()  # its token never went there


def test_a_run_directory_from_before_owner_records_is_still_resumed_and_gets_one(tmp_path: Path) -> None:
    legacy = RunDir(tmp_path / "job-4")  # the old naming, made by this job's own first attempt
    _plant_final_checkpoint(legacy, step=5)
    claimed = ClaimedJob(job_id=4, run_dir=legacy.root, gpus=(), attempt=2, token="t", config={})
    prepare_run_dir(claimed, app_url="http://x")
    assert json.loads(legacy.owner.read_text()) == {"job_id": 4, "run": "job-4"}
    assert (legacy.checkpoints / "checkpoint-5" / CHECKPOINT_COMPLETE_MARKER).is_file()


def test_run_directories_and_the_runs_directory_are_private_to_the_app_s_user(
    kit, settings: Settings
) -> None:
    kit.queue("sleep=0.1")
    old_umask = os.umask(0o022)  # the usual default, under which mkdir makes 0755
    try:
        run = prepare_run_dir(_claim(kit, settings), app_url=settings.app_url)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(run.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.runs_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.owner.stat().st_mode) == 0o600
