"""End to end on a live uvicorn: the lifespan starts the scheduler; the fake trainer reports over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """The app with its scheduler on, served on settings.port (the URL workers report to)."""
    settings.scheduler_enabled = True
    settings.heartbeat_timeout_s = 2.5  # the fake reports every ~0.1 s; silence would fail the job
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield settings.app_url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _wait_job(client: httpx.Client, job_id: int, statuses: set[str], timeout: float = 20.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, (
            f"job {job_id} stuck in {job['status']}: {job.get('failure_reason')}"
        )
        time.sleep(0.1)


def test_a_submitted_job_runs_reports_metrics_and_succeeds(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        created = client.post("/api/jobs", json={"name": "sleep=4", "resources": {"gpus": 1}})
        assert created.status_code == 201
        job_id = created.json()["id"]
        running = _wait_job(client, job_id, {"running"})  # the worker's status event, through ingest
        assert running["assigned_gpus"] == "0"
        health = client.get("/api/health").json()
        assert health["scheduler"]["running"] is True
        assert [j["job_id"] for j in health["scheduler"]["jobs"]] == [job_id]
        done = _wait_job(client, job_id, {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["failure_reason"]  # heartbeats kept it alive past 2.5 s
        loss = client.get(f"/api/jobs/{job_id}/metrics", params={"keys": "loss"}).json()["series"]["loss"]
        assert len(loss) >= 10 and loss[0] == [1, 2.0]


def test_cancelling_through_the_api_stops_the_worker(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        job_id = client.post("/api/jobs", json={"name": "sleep=30"}).json()["id"]
        _wait_job(client, job_id, {"running"})
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        done = _wait_job(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
        assert (done["status"], done["failure_reason"], done["exit_code"]) == (
            "cancelled",
            "cancelled on request",
            3,
        )
        detail = client.get(f"/api/jobs/{job_id}").json()
        assert "SIGTERM received" in detail["stderr_tail"]
