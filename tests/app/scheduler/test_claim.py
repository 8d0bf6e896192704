"""Claiming under BEGIN IMMEDIATE: the claimed row, the run directory, impossible jobs, no double booking."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import ACTIVE, JobStatus
from app.scheduler.claim import ClaimedJob, claim_next_job, prepare_run_dir, slots_in_use
from app.scheduler.gpus import Slots, discover_slots
from app.scheduler.placement import parse_assigned
from app.settings import Settings


def test_a_claim_moves_the_job_to_starting_with_gpus_attempt_run_dir_and_token(
    kit, settings: Settings
) -> None:
    job_id = kit.queue(gpus=2)
    claimed = claim_next_job(kit.factory, settings=settings, slots=discover_slots(settings))
    assert claimed is not None and claimed.job_id == job_id
    job = kit.job(job_id)
    assert job.status == JobStatus.STARTING
    assert job.assigned_gpus == "0,1" and claimed.gpus == ("0", "1")
    assert job.attempt == 1
    assert job.run_dir is not None and Path(job.run_dir).parent == settings.runs_dir
    assert Path(job.run_dir).name.startswith(f"job-{job_id}-")
    assert job.starting_at is not None
    assert job.token_hash == hashlib.sha256(claimed.token.encode()).hexdigest()
    assert claimed.token not in repr(claimed)


def test_the_run_directory_gets_the_config_and_a_private_job_file(kit, settings: Settings) -> None:
    job_id = kit.queue("sleep=1")
    claimed = claim_next_job(kit.factory, settings=settings, slots=discover_slots(settings))
    assert claimed is not None
    run = prepare_run_dir(claimed, app_url="http://127.0.0.1:9999")
    assert json.loads(run.config.read_text()) == kit.job(job_id).config
    assert json.loads(run.job.read_text()) == {
        "job_id": job_id,
        "app_url": "http://127.0.0.1:9999",
        "token": claimed.token,
    }
    assert stat.S_IMODE(run.job.stat().st_mode) == 0o600


def test_preparing_a_resumed_run_clears_the_old_outcome_but_keeps_checkpoints(tmp_path: Path) -> None:
    run_dir = tmp_path / "job-1"
    (run_dir / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (run_dir / "outcome.json").write_text('{"status": "failed"}')
    (run_dir / "job.json").write_text("{}")
    (run_dir / "job.json").chmod(0o644)
    claimed = ClaimedJob(job_id=1, run_dir=run_dir, gpus=(), attempt=2, token="t", config={"name": "x"})
    run = prepare_run_dir(claimed, app_url="http://x")
    assert not run.outcome.exists()
    assert (run_dir / "checkpoints" / "checkpoint-10").is_dir()
    assert stat.S_IMODE(run.job.stat().st_mode) == 0o600


def test_a_job_asking_for_more_gpus_than_exist_fails_at_once_and_the_next_job_is_claimed(
    kit, settings: Settings
) -> None:
    too_big = kit.queue(gpus=3, priority=10)
    fits = kit.queue(gpus=1)
    claimed = claim_next_job(kit.factory, settings=settings, slots=discover_slots(settings))
    assert claimed is not None and claimed.job_id == fits
    job = kit.job(too_big)
    assert job.status == JobStatus.FAILED
    assert job.failure_reason == "asks for 3 GPUs; this machine has 2 — lower resources.gpus to at most 2"
    assert job.finished_at is not None


def test_on_a_machine_without_gpus_a_gpu_job_fails_and_a_cpu_job_runs(kit, settings: Settings) -> None:
    no_gpus = Slots(gpus=(), cpu_slots=1)
    gpu_job = kit.queue(gpus=2)
    cpu_job = kit.queue(gpus=0)
    claimed = claim_next_job(kit.factory, settings=settings, slots=no_gpus)
    assert claimed is not None and claimed.job_id == cpu_job and claimed.gpus == ()
    assert kit.job(cpu_job).assigned_gpus == ""
    assert kit.job(gpu_job).failure_reason == (
        "asks for 2 GPUs; this machine has 0 — lower resources.gpus (0 runs on the CPU)"
    )


def test_claims_follow_priority_then_submission_order(kit, settings: Settings) -> None:
    slots = Slots(gpus=("0", "1", "2", "3"), cpu_slots=0)
    first, second, urgent = kit.queue(gpus=1), kit.queue(gpus=1), kit.queue(gpus=1, priority=5)
    order = [claim_next_job(kit.factory, settings=settings, slots=slots) for _ in range(3)]
    assert [c.job_id for c in order if c] == [urgent, first, second]
    assert [c.gpus for c in order if c] == [("0",), ("1",), ("2",)]


def test_nothing_is_claimed_while_the_slots_are_full(kit, settings: Settings) -> None:
    slots = discover_slots(settings)
    kit.queue(gpus=2)
    kit.queue(gpus=1)
    assert claim_next_job(kit.factory, settings=settings, slots=slots) is not None
    assert claim_next_job(kit.factory, settings=settings, slots=slots) is None


def test_concurrent_claimers_never_hand_out_a_gpu_twice(
    kit, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    # 10 jobs wanting 1 or 2 GPUs and some CPU jobs; 6 threads, each with its own sessions, claim at once
    ids = [kit.queue(gpus=(1 if i % 3 else 2)) for i in range(10)] + [kit.queue(gpus=0) for _ in range(3)]
    slots = discover_slots(settings)
    claimed: list[ClaimedJob] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def claimer() -> None:
        try:
            start.wait()
            for _ in range(5):
                got = claim_next_job(session_factory, settings=settings, slots=slots)
                if got is not None:
                    with lock:
                        claimed.append(got)
        except BaseException as exc:  # reported below; a thread's exception would vanish otherwise
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    gpus_handed_out = [g for c in claimed for g in c.gpus]
    assert sorted(gpus_handed_out) == sorted(set(gpus_handed_out)), f"a GPU was handed out twice: {claimed}"
    assert set(gpus_handed_out) <= {"0", "1"}
    assert sum(1 for c in claimed if not c.gpus) == 1  # one CPU slot
    assert len({c.job_id for c in claimed}) == len(claimed)
    # the database agrees: active jobs hold disjoint GPUs, and the slots are exactly full
    with session_factory() as session:
        busy_gpus, busy_cpu = slots_in_use(session)
        active = [kit.job(i) for i in ids if kit.job(i).status in {s.value for s in ACTIVE}]
    assert busy_gpus == {"0", "1"} and busy_cpu == 1
    held = [g for job in active for g in parse_assigned(job.assigned_gpus)]
    assert len(held) == len(set(held))
