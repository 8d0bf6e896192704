"""A job travels the whole app: API → scheduler → a real child process → HTTP ingest → SSE → succeeded.

The child is tests/fakes/fake_trainer.py (the scheduler's seam): a real process that reports through the
real worker reporter, so everything on the app side here is the production path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """The scheduler on, launching the fake trainer on one CPU slot."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        scheduler_enabled=True,
        worker_module="tests.fakes.fake_trainer",
        cpu_slots=1,
        gpu_slots="",
        sse_batch_interval_s=0.05,
        sse_ping_interval_s=0.5,
    )


def _stream(url: str, job_id: int) -> list[tuple[str, Any]]:
    import json

    got: list[tuple[str, Any]] = []
    event = "message"
    with httpx.stream("GET", f"{url}/api/jobs/{job_id}/stream", timeout=httpx.Timeout(10, read=30)) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                got.append((event, json.loads(line.removeprefix("data: "))))
    return got


def test_a_submitted_job_runs_reports_live_and_succeeds(live_server) -> None:  # type: ignore[no-untyped-def]
    created = httpx.post(f"{live_server.url}/api/jobs", json={"name": "sleep=0.8"}, timeout=10)
    assert created.status_code == 201
    job_id = created.json()["id"]
    messages = _stream(live_server.url, job_id)  # returns when the server closes it after the final state
    statuses = [data["status"] for event, data in messages if event == "job"]
    assert statuses[-1] == "succeeded", messages[-3:]
    assert "running" in statuses
    loss = [p for event, data in messages if event == "metrics" for p in data["series"].get("loss", [])]
    assert loss, "no loss points reached the stream"
    assert messages[-1][0] == "end"
    summary = httpx.get(f"{live_server.url}/api/jobs/{job_id}", timeout=10).json()
    assert summary["exit_code"] == 0 and summary["attempt"] == 1
    assert summary["last_loss"] is not None
    health = httpx.get(f"{live_server.url}/api/health", timeout=10).json()
    assert health["scheduler"] != {"enabled": False}
