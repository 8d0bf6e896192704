"""The supervisor with real subprocesses (the fake trainer): placement, exits, cancel, kill, hangs."""

from __future__ import annotations

import os
import signal
import time

from app.jobs.status import ACTIVE, JobStatus
from app.scheduler.gpus import discover_slots
from app.scheduler.local import LocalLauncher
from app.scheduler.placement import parse_assigned
from app.scheduler.supervisor import Supervisor
from app.settings import Settings
from tests.waiting import wait_until

DONE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def test_a_job_runs_to_success_and_keeps_its_log_tail(kit) -> None:
    job_id = kit.queue("sleep=0.3")
    job = kit.wait_status(job_id, *DONE)
    assert job.status == JobStatus.SUCCEEDED
    assert job.exit_code == 0 and job.failure_reason is None and job.finished_at is not None
    assert "fake trainer: step 1" in (job.stderr_tail or "")
    env = kit.env(job_id)
    assert env["argv"][1:] == [job.run_dir] and env["job_id"] == job_id and env["has_token"]
    assert job.pid == env["pid"]


def test_jobs_are_placed_by_gpu_count_priority_and_order_with_cuda_visible_devices_set(kit) -> None:
    wide = kit.queue("sleep=1.5", gpus=2)  # first in submission order, but it does not fit next to urgent
    urgent = kit.queue("sleep=0.5", gpus=1, priority=5)
    small = kit.queue("sleep=2", gpus=1)  # backfills the second GPU
    later = kit.queue("sleep=0.3", gpus=1)  # nothing left for it yet
    cpu = kit.queue("sleep=1.5", gpus=0)
    launched = kit.supervisor.launch_ready()
    assert sorted(launched) == sorted([urgent, small, cpu])
    assert kit.job(urgent).assigned_gpus == "0" and kit.env(urgent)["CUDA_VISIBLE_DEVICES"] == "0"
    assert kit.job(small).assigned_gpus == "1" and kit.env(small)["CUDA_VISIBLE_DEVICES"] == "1"
    assert kit.job(cpu).assigned_gpus == "" and kit.env(cpu)["CUDA_VISIBLE_DEVICES"] == ""
    assert kit.job(wide).status == JobStatus.QUEUED and kit.job(later).status == JobStatus.QUEUED
    kit.tick_until(
        lambda: all(kit.job(i).status in DONE for i in (wide, urgent, small, later, cpu)), timeout=30
    )
    # backfill: the 1-GPU job took GPU 0 when urgent ended; the wide job got both once small ended too
    assert kit.job(later).starting_at < kit.job(wide).starting_at
    assert kit.job(later).assigned_gpus == "0"
    assert kit.job(wide).assigned_gpus == "0,1" and kit.env(wide)["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_wide_job_past_its_reservation_age_is_not_overtaken_by_backfill(kit, settings: Settings) -> None:
    settings.gpu_reserve_after_s = 0.0
    wide = kit.queue("sleep=0.3", gpus=2)
    urgent = kit.queue("sleep=0.8", gpus=1, priority=5)
    small = kit.queue("sleep=0.3", gpus=1)
    assert kit.supervisor.launch_ready() == [urgent]  # GPU 1 stays free for the wide job
    kit.tick_until(lambda: all(kit.job(i).status in DONE for i in (wide, urgent, small)), timeout=30)
    assert kit.job(wide).starting_at < kit.job(small).starting_at
    assert kit.job(wide).assigned_gpus == "0,1"


def test_ten_queued_jobs_never_oversubscribe_the_slots(kit) -> None:
    ids = [kit.queue("sleep=0.2", gpus=(2 if i % 4 == 0 else 1 if i % 4 != 3 else 0)) for i in range(10)]
    peak = 0

    def check() -> bool:
        nonlocal peak
        active = [j for j in (kit.job(i) for i in ids) if j.status in {s.value for s in ACTIVE}]
        held = [g for j in active for g in parse_assigned(j.assigned_gpus)]
        assert len(held) == len(set(held)), (
            f"a GPU is held twice: {[(j.id, j.assigned_gpus) for j in active]}"
        )
        assert set(held) <= {"0", "1"}
        assert sum(1 for j in active if j.assigned_gpus == "") <= 1
        peak = max(peak, len(active))
        return all(kit.job(i).status in DONE for i in ids)

    kit.tick_until(check, timeout=60)
    for i in ids:
        job = kit.job(i)
        assert job.status == JobStatus.SUCCEEDED, (i, job.failure_reason)
        assert kit.env(i)["CUDA_VISIBLE_DEVICES"] == job.assigned_gpus
    assert peak >= 2  # jobs did run side by side


def test_cancel_sends_sigterm_and_the_job_ends_cancelled(kit) -> None:
    job_id = kit.queue("sleep=30")
    kit.wait_status(job_id, JobStatus.STARTING, JobStatus.RUNNING)
    kit.tick_until(lambda: "step 1" in _log(kit, job_id))
    kit.set(job_id, status=JobStatus.CANCELLING.value)  # what POST /api/jobs/{id}/cancel does
    started = time.monotonic()
    job = kit.wait_status(job_id, *DONE, timeout=10)
    assert (job.status, job.failure_reason, job.exit_code) == (JobStatus.CANCELLED, "cancelled on request", 3)
    assert time.monotonic() - started < 5  # a clean exit, no grace period spent
    assert "SIGTERM received" in (job.stderr_tail or "")


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(kit, settings: Settings) -> None:
    job_id = kit.queue("sleep=30 ignore_term=1")
    kit.wait_status(job_id, JobStatus.STARTING)
    kit.tick_until(lambda: "step 1" in _log(kit, job_id))
    kit.set(job_id, status=JobStatus.CANCELLING.value)
    started = time.monotonic()
    job = kit.wait_status(job_id, *DONE, timeout=10)
    waited = time.monotonic() - started
    assert job.status == JobStatus.CANCELLED and job.exit_code == -signal.SIGKILL
    assert job.failure_reason == (
        "cancelled on request; it did not stop after SIGTERM within the grace period and was killed"
    )
    assert settings.cancel_grace_s <= waited < settings.cancel_grace_s + 5


def test_a_child_killed_with_sigkill_fails_with_the_signal_named_and_its_log_tail(kit) -> None:
    job_id = kit.queue("sleep=30")
    kit.wait_status(job_id, JobStatus.STARTING)
    kit.tick_until(lambda: "step 2" in _log(kit, job_id))
    os.kill(kit.env(job_id)["pid"], signal.SIGKILL)
    started = time.monotonic()
    job = kit.wait_status(job_id, *DONE, timeout=5)
    assert time.monotonic() - started < 3
    assert job.status == JobStatus.FAILED and job.exit_code == -9
    assert job.failure_reason is not None and job.failure_reason.startswith("killed by signal 9 (SIGKILL)")
    assert "fake trainer: step 2" in (job.stderr_tail or "")


def test_exit_codes_of_real_processes_become_plain_reasons(kit) -> None:
    oom = kit.queue("sleep=0 exit=5", gpus=1)
    config = kit.queue("sleep=0 exit=2 reason=dataset.source_has_no_rows")
    crash = kit.queue("sleep=0 exit=7 outcome=0 say=ValueError:_tokenizer_missing", gpus=1)
    kit.tick_until(lambda: all(kit.job(i).status in DONE for i in (oom, config, crash)), timeout=20)
    assert kit.job(oom).failure_reason == (
        "out of GPU memory: lower training.batch_size (now 4) and raise training.grad_accum to keep the "
        "batch; or lower training.max_seq_len (now 512)"
    )
    assert (
        kit.job(config).failure_reason == "the config or dataset cannot be used: dataset.source has no rows"
    )
    assert kit.job(crash).failure_reason == "exited with code 7: ValueError: tokenizer missing"
    assert [kit.job(i).exit_code for i in (oom, config, crash)] == [5, 2, 7]


def test_a_job_past_its_deadline_is_stopped_and_failed(kit) -> None:
    job_id = kit.queue("sleep=30", max_runtime_minutes=0.01)  # 0.6 s
    kit.supervisor.launch_ready()
    kit.env(job_id)  # its SIGTERM handler is in place (a loaded machine may start Python slowly)
    job = kit.wait_status(job_id, *DONE, timeout=10)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason == (
        "exceeded its deadline of 0.01 minutes (resources.max_runtime_minutes) and was stopped "
        "(a checkpoint was saved: resume continues from it)"
    )


def test_a_job_without_heartbeats_is_stopped_as_hung(kit, settings: Settings) -> None:
    settings.heartbeat_timeout_s = 1.0  # nothing serves the fake's reports here, so no heartbeat arrives
    job_id = kit.queue("sleep=30")
    job = kit.wait_status(job_id, *DONE, timeout=10)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason is not None
    assert job.failure_reason.startswith("no heartbeat for ") and "stopped as hung" in job.failure_reason
    assert "never reached the app" in job.failure_reason and "TUNEBOARD_PUBLIC_URL" in job.failure_reason


def test_a_recent_heartbeat_keeps_a_quiet_job_alive(kit, settings: Settings) -> None:
    from datetime import UTC, datetime

    settings.heartbeat_timeout_s = 1.0
    job_id = kit.queue("sleep=2.5")
    kit.wait_status(job_id, JobStatus.STARTING)

    def beat_and_tick() -> str:
        kit.set(job_id, heartbeat_at=datetime.now(UTC))  # what ingest does on every POST
        kit.supervisor.tick()
        return str(kit.job(job_id).status)

    wait_until(
        beat_and_tick, 15, f"job {job_id} to finish", interval=0.1, until=lambda status: status in DONE
    )
    assert kit.job(job_id).status == JobStatus.SUCCEEDED


def test_a_worker_that_cannot_be_started_fails_with_the_reason(
    kit, settings: Settings, session_factory
) -> None:
    broken = Supervisor(
        settings=settings,
        session_factory=session_factory,
        launcher=LocalLauncher(python=str(settings.data_dir / "no-such-python"), worker_module="x"),
        slots=discover_slots(settings),
    )
    job_id = kit.queue()
    assert broken.launch_ready() == []
    job = kit.job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason is not None and job.failure_reason.startswith(
        "could not start the training process"
    )
    assert "TUNEBOARD_WORKER_PYTHON" in job.failure_reason


def test_one_jobs_supervision_error_does_not_stop_the_others(kit, caplog) -> None:
    bad, good = kit.queue("sleep=0.5"), kit.queue("sleep=0.5", gpus=1)
    real_poll = kit.supervisor.launcher.poll

    def flaky_poll(handle):  # type: ignore[no-untyped-def]
        if handle.job_id == bad:
            raise RuntimeError("simulated launcher trouble")
        return real_poll(handle)

    kit.supervisor.launcher.poll = flaky_poll
    kit.wait_status(good, *DONE, timeout=15)
    assert kit.job(good).status == JobStatus.SUCCEEDED
    assert any(f"job {bad}: supervising it failed" in r.getMessage() for r in caplog.records)
    kit.supervisor.launcher.poll = real_poll  # the bad job's process still gets watched to the end
    assert kit.wait_status(bad, *DONE).status == JobStatus.SUCCEEDED


def test_the_snapshot_lists_slots_and_running_jobs(kit) -> None:
    job_id = kit.queue("sleep=5", gpus=1)
    kit.supervisor.tick()
    snap = kit.supervisor.snapshot()
    assert snap["gpus"] == ["0", "1"] and snap["free_gpus"] == ["1"]
    assert snap["cpu_slots"] == 1 and snap["free_cpu_slots"] == 1
    assert [j["job_id"] for j in snap["jobs"]] == [job_id] and snap["jobs"][0]["gpus"] == ["0"]
    assert snap["last_tick_at"] is not None


def _log(kit, job_id: int) -> str:  # type: ignore[no-untyped-def]
    run_dir = kit.job(job_id).run_dir
    if run_dir is None:
        return ""
    try:
        with open(os.path.join(run_dir, "stderr.log"), encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def test_the_child_gets_no_database_url_or_credentials_from_the_app_environment(kit, monkeypatch) -> None:
    monkeypatch.setenv("TUNEBOARD_DATABASE_URL", "postgresql://user:pw@db/tuneboard")
    monkeypatch.setenv("TUNEBOARD_AUTH_PASSWORD", "hunter2")
    monkeypatch.setenv("TUNEBOARD_CPU_SLOTS", "1")
    monkeypatch.delenv("TUNEBOARD_ALLOWED_HOSTS", raising=False)  # set for TestClient by tests/conftest.py
    job_id = kit.queue("sleep=0")
    kit.wait_status(job_id, *DONE)
    assert kit.env(job_id)["tuneboard_env"] == ["TUNEBOARD_CPU_SLOTS"]


def test_a_resumed_job_runs_again_as_attempt_two_in_the_same_run_dir_with_its_own_log_tail(kit) -> None:
    from app.jobs import service
    from app.models import Job

    job_id = kit.queue("sleep=0 exit=4 reason=loss_became_nan")
    first = kit.wait_status(job_id, *DONE)
    assert (first.status, first.attempt, first.failure_reason) == (
        JobStatus.FAILED,
        1,
        "diverged: loss became nan",
    )
    with kit.factory() as session:
        job = session.get(Job, job_id)
        service.resume_job(session, job=job)
        session.commit()
    kit.supervisor.launch_ready()
    second = kit.job(job_id)
    assert second.status == JobStatus.STARTING and second.attempt == 2 and second.run_dir == first.run_dir
    assert second.failure_reason is None and second.exit_code is None
    again = kit.wait_status(job_id, *DONE)
    assert again.attempt == 2 and again.failure_reason == "diverged: loss became nan"
    assert again.stderr_tail is not None and again.stderr_tail.count("fake trainer: started") == 1
    with open(f"{again.run_dir}/stderr.log", encoding="utf-8") as fh:
        assert fh.read().count("fake trainer: started") == 2  # the log keeps both attempts
