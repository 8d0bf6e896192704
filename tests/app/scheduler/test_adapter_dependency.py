"""A job that starts from another job's adapter (init_adapter: job:<id>) waits in the queue until that job
has succeeded, and fails saying what to do when it cannot; "Try SFT, then DPO" queues both at once."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.models import Job
from app.scheduler.claim import claim_next_job
from app.scheduler.gpus import Slots
from app.settings import Settings
from tests.app.conftest import set_status

CPU_SLOTS = Slots(gpus=(), cpu_slots=2)


def status_of(factory: sessionmaker[Session], job_id: int) -> tuple[str, str | None]:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status, job.failure_reason


def claim(factory: sessionmaker[Session], settings: Settings) -> int | None:
    claimed = claim_next_job(factory, settings=settings, slots=CPU_SLOTS)
    return claimed.job_id if claimed is not None else None


def test_try_sft_then_dpo_queues_both_and_dpo_waits_for_sft(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    page = client.post("/jobs/demo-preference", follow_redirects=False)
    assert page.status_code == 303
    jobs: list[dict[str, Any]] = sorted(client.get("/api/jobs").json(), key=lambda j: j["id"])
    sft_id, dpo_id = (j["id"] for j in jobs)
    dpo = client.get(f"/api/jobs/{dpo_id}").json()["config"]
    assert dpo["method"] == "dpo" and dpo["init_adapter"] == f"job:{sft_id}"
    assert client.get(f"/api/jobs/{sft_id}").json()["config"]["method"] == "sft"
    assert "Waits in the queue for" in client.get(f"/jobs/{dpo_id}").text
    assert claim(session_factory, settings) == sft_id
    assert claim(session_factory, settings) is None  # a free slot, but DPO waits for the SFT adapter
    set_status(session_factory, sft_id, JobStatus.RUNNING)
    assert claim(session_factory, settings) is None
    set_status(session_factory, sft_id, JobStatus.SUCCEEDED)
    assert claim(session_factory, settings) == dpo_id


def test_a_job_whose_adapter_source_failed_fails_saying_what_to_do(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    client.post("/jobs/demo-preference", follow_redirects=False)
    sft_id, dpo_id = sorted(j["id"] for j in client.get("/api/jobs").json())
    assert claim(session_factory, settings) == sft_id
    set_status(session_factory, sft_id, JobStatus.FAILED, "out of memory")
    assert claim(session_factory, settings) is None
    status, reason = status_of(session_factory, dpo_id)
    assert status == "failed"
    assert reason == (
        f"it starts from job {sft_id}'s adapter, but job {sft_id} ended failed: "
        f"resume job {sft_id}, then resume this job"
    )
