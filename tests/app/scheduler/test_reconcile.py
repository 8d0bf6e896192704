"""Start-up reconciliation: live workers are re-attached, ended ones classified, vanished ones failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.jobs.status import JobStatus
from app.scheduler.reconcile import reconcile
from app.scheduler.supervisor import Supervisor

DONE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _reconcile(sup: Supervisor):  # type: ignore[no-untyped-def]
    return reconcile(sup.session_factory, launcher=sup.launcher, supervisor=sup)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stage(kit, status: JobStatus, *, pid: int | None, tmp_path: Path, gpus: str = "0") -> tuple[int, Path]:  # type: ignore[no-untyped-def]
    """A job the database says is active, with a run directory, as a crashed app would leave it."""
    job_id = kit.queue("sleep=1", gpus=1)
    run_dir = tmp_path / f"job-{job_id}"
    run_dir.mkdir()
    (run_dir / "stderr.log").write_text("step 1\nstep 2\n")
    kit.set(job_id, status=status.value, pid=pid, run_dir=str(run_dir), assigned_gpus=gpus, attempt=1)
    return job_id, run_dir


def test_a_live_worker_is_reattached_and_supervised_to_the_end(kit, restarted: Supervisor) -> None:
    job_id = kit.queue("sleep=2", gpus=1)
    kit.supervisor.launch_ready()  # the first app launched it ... then "crashed" without watching further
    pid = kit.env(job_id)["pid"]
    assert _reconcile(restarted) == {"reattached": 1}
    assert restarted.owned_job_ids() == [job_id]
    snap = restarted.snapshot()
    assert snap["jobs"][0]["reattached"] is True and snap["free_gpus"] == ["1"]
    job = kit.wait_status(job_id, *DONE, sup=restarted)
    # not our child any more, so the exit code comes from the worker's outcome.json
    assert (job.status, job.exit_code, job.pid) == (JobStatus.SUCCEEDED, 0, pid)


def test_a_reattached_worker_can_still_be_cancelled(kit, restarted: Supervisor) -> None:
    job_id = kit.queue("sleep=30")
    kit.supervisor.launch_ready()
    kit.env(job_id)  # it runs
    _reconcile(restarted)
    kit.set(job_id, status=JobStatus.CANCELLING.value)
    job = kit.wait_status(job_id, *DONE, sup=restarted, timeout=10)
    assert (job.status, job.failure_reason, job.exit_code) == (JobStatus.CANCELLED, "cancelled on request", 3)


def test_a_worker_whose_pid_never_reached_the_database_is_found_through_launcher_json(
    kit, restarted: Supervisor
) -> None:
    job_id = kit.queue("sleep=2")
    kit.supervisor.launch_ready()
    pid = kit.env(job_id)["pid"]
    kit.set(job_id, pid=None)
    assert _reconcile(restarted) == {"reattached": 1}
    assert kit.job(job_id).pid == pid


def test_a_vanished_worker_fails_as_lost_and_names_the_checkpoint_resume_uses(
    kit, restarted: Supervisor, tmp_path: Path
) -> None:
    job_id, run_dir = _stage(kit, JobStatus.RUNNING, pid=_dead_pid(), tmp_path=tmp_path)
    (run_dir / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-20" / "COMPLETE").write_text("")
    (run_dir / "checkpoints" / "checkpoint-30").mkdir()  # torn: no marker, resume skips it
    assert _reconcile(restarted) == {"lost": 1}
    job = kit.job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason == (
        "worker lost: the process ended while the app was down; "
        "resume continues from its last complete checkpoint (checkpoint-20)"
    )
    assert job.stderr_tail == "step 1\nstep 2"


def test_a_worker_that_ended_with_an_outcome_is_classified_from_it(
    kit, restarted: Supervisor, tmp_path: Path
) -> None:
    job_id, run_dir = _stage(kit, JobStatus.RUNNING, pid=_dead_pid(), tmp_path=tmp_path)
    (run_dir / "outcome.json").write_text('{"status": "failed", "reason": "loss became nan", "exit_code": 4}')
    assert _reconcile(restarted) == {"finished": 1}
    job = kit.job(job_id)
    assert (job.status, job.failure_reason, job.exit_code) == (
        JobStatus.FAILED,
        "diverged: loss became nan",
        4,
    )


def test_a_pending_cancel_whose_worker_vanished_ends_cancelled(
    kit, restarted: Supervisor, tmp_path: Path
) -> None:
    job_id, _ = _stage(kit, JobStatus.CANCELLING, pid=_dead_pid(), tmp_path=tmp_path)
    _reconcile(restarted)
    assert kit.job(job_id).status == JobStatus.CANCELLED


def test_a_job_claimed_but_never_launched_fails_with_a_resume_hint(
    kit, restarted: Supervisor, tmp_path: Path
) -> None:
    job_id, _ = _stage(kit, JobStatus.STARTING, pid=None, tmp_path=tmp_path)
    _reconcile(restarted)
    job = kit.job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason == (
        "worker lost: the app stopped before the training process was started; resume to start it"
    )


def test_a_live_process_that_is_not_our_worker_is_not_adopted(
    kit, restarted: Supervisor, tmp_path: Path
) -> None:
    # the pid was reused by an unrelated process (here: the test runner itself)
    job_id, _ = _stage(kit, JobStatus.RUNNING, pid=os.getpid(), tmp_path=tmp_path)
    assert _reconcile(restarted) == {"lost": 1}
    assert restarted.owned_job_ids() == []
    assert kit.job(job_id).status == JobStatus.FAILED


def test_jobs_of_another_launcher_are_left_alone(kit, restarted: Supervisor, tmp_path: Path) -> None:
    job_id, _ = _stage(kit, JobStatus.RUNNING, pid=None, tmp_path=tmp_path)
    kit.set(job_id, launcher="ray")
    assert _reconcile(restarted) == {}
    assert kit.job(job_id).status == JobStatus.RUNNING
