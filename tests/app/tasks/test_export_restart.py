"""An export is scheduled work that survives an app restart: a live one is re-attached and finishes, one that
died while the app was down is marked failed with the reason (the real scheduler, a held stand-in export)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.main import create_app
from app.settings import Settings
from app.tasks.manager import TaskManager
from tests.app.scheduler.test_tasks import finished_job, scheduled_tasks, task_row
from tests.waiting import gone, wait_until

HELD_EXPORT = "tests.app.tasks.held_export"


def app_client(settings: Settings) -> TestClient:
    settings.scheduler_enabled = True
    app = create_app(settings)
    manager = TaskManager(settings)
    manager.export_module = HELD_EXPORT
    app.state.tasks = manager
    return TestClient(app)


def test_an_export_running_across_an_app_restart_is_reattached_and_finishes(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    url = f"/api/jobs/{job_id}/exports/gguf-q4_k_m"
    with app_client(settings) as client:
        started = client.post(f"/api/jobs/{job_id}/exports", json={"format": "gguf", "quant": "q4_k_m"})
        assert started.status_code == 202, started.text
        pid = wait_until(lambda: task_row(session_factory, job_id).pid, 15, "the export to start")
    assert psutil.pid_exists(pid) and not gone(pid, timeout=0.2)  # the app stopped, the export did not
    try:
        with app_client(settings) as client:
            scheduler = client.get("/api/health").json()["scheduler"]
            assert scheduler["tasks_reconciled_at_start"] == {"reattached": 1}
            assert client.get(url).json()["state"] == "running"
            box = client.get(f"/jobs/{job_id}/partials/exports").text  # the page polls and offers Cancel
            assert 'hx-trigger="every 2s"' in box and "/exports/gguf-q4_k_m/cancel" in box
            (run_dir / "release").touch()
            done = wait_until(
                lambda: client.get(url).json(),
                15,
                "the export to finish",
                until=lambda s: s["state"] != "running",
            )
            assert done["state"] == "succeeded", done
            assert [f["name"] for f in done["files"]] == ["README.md"]
            wait_until(
                lambda: scheduled_tasks(client),
                15,
                "the scheduler to record its end",
                until=lambda t: t == [],
            )
        assert task_row(session_factory, job_id).status == "succeeded"
    finally:
        (run_dir / "release").touch()


def test_an_export_that_died_while_the_app_was_down_is_marked_failed_with_the_reason(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    with app_client(settings) as client:
        assert client.post(f"/api/jobs/{job_id}/exports", json={"format": "merged"}).status_code == 202
        pid = wait_until(lambda: task_row(session_factory, job_id).pid, 15, "the export to start")
    os.killpg(pid, signal.SIGKILL)
    assert gone(pid)
    with app_client(settings) as client:
        assert client.get("/api/health").json()["scheduler"]["tasks_reconciled_at_start"] == {"lost": 1}
        status = client.get(f"/api/jobs/{job_id}/exports/merged").json()
        assert status["state"] == "failed" and "ended while the app was down" in status["message"]
    task = task_row(session_factory, job_id)
    assert task.status == "failed" and "ended while the app was down" in (task.failure_reason or "")
