"""End to end on a live uvicorn: the lifespan starts the scheduler; the fake trainer reports over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import serving, wait_job


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """The app with its scheduler on, served on settings.port (the URL workers report to)."""
    settings.scheduler_enabled = True
    settings.heartbeat_timeout_s = 2.5  # the fake reports every ~0.1 s; silence would fail the job
    with serving(create_app(settings), settings.port):
        yield settings.app_url


def test_a_submitted_job_runs_reports_metrics_and_succeeds(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        created = client.post("/api/jobs", json={"name": "sleep=4", "resources": {"gpus": 1}})
        assert created.status_code == 201
        job_id = created.json()["id"]
        # running is the worker's own status event, through ingest
        running = wait_job(client, job_id, {"running"}, timeout=20)
        assert running["assigned_gpus"] == "0"
        health = client.get("/api/health").json()
        assert health["scheduler"]["running"] is True
        assert [j["job_id"] for j in health["scheduler"]["jobs"]] == [job_id]
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=20)
        assert done["status"] == "succeeded", done["failure_reason"]  # heartbeats kept it alive past 2.5 s
        loss = client.get(f"/api/jobs/{job_id}/metrics", params={"keys": "loss"}).json()["series"]["loss"]
        assert len(loss) >= 10 and loss[0] == [1, 2.0]


def test_cancelling_through_the_api_stops_the_worker(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        job_id = client.post("/api/jobs", json={"name": "sleep=30"}).json()["id"]
        wait_job(client, job_id, {"running"}, timeout=20)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
        assert (done["status"], done["failure_reason"], done["exit_code"]) == (
            "cancelled",
            "cancelled on request",
            3,
        )
        detail = client.get(f"/api/jobs/{job_id}").json()
        assert "SIGTERM received" in detail["stderr_tail"]
