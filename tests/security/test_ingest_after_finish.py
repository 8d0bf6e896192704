"""A finished job's history cannot be rewritten with its worker token.

Its token stops working once the job is terminal (409), so its points are fixed from then on (while it runs,
a replayed event is a no-op and only a new event at a step retrained by a rollback or resume replaces a
point); artifact events name plain paths inside the run directory only;
and a bad token is refused before the request body is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from tests.app.conftest import metric_event, set_status

AUTH = {"Authorization": "Bearer test-token"}


def post(client: TestClient, job_id: int, events: list[dict[str, Any]]) -> Any:
    return client.post(f"/api/jobs/{job_id}/events", json={"events": events}, headers=AUTH)


def loss_series(client: TestClient, job_id: int) -> list[list[float]]:
    return client.get(f"/api/jobs/{job_id}/metrics", params={"keys": "loss"}).json()["series"]["loss"]


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_a_finished_jobs_token_no_longer_ingests_or_uploads(
    client: TestClient, started_job: Any, session_factory: sessionmaker[Session], final: JobStatus
) -> None:
    job_id = started_job()
    assert post(client, job_id, [metric_event(1, 1, loss=2.0)]).status_code == 200
    set_status(session_factory, job_id, final)
    answer = post(client, job_id, [metric_event(2, 1, loss=12345.0)])
    assert answer.status_code == 409, answer.text
    assert f"job {job_id} is {final.value}" in answer.json()["detail"]
    upload = client.put(
        f"/api/jobs/{job_id}/artifacts/adapter/adapter_config.json", content=b"{}", headers=AUTH
    )
    assert upload.status_code == 409
    assert loss_series(client, job_id) == [[1, 2.0]]


def test_the_workers_last_events_while_it_is_still_stopping_are_kept(
    client: TestClient, started_job: Any, session_factory: sessionmaker[Session]
) -> None:
    # the supervisor marks a job terminal only after its process has exited: until then, all it says counts
    job_id = started_job()
    set_status(session_factory, job_id, JobStatus.RUNNING)
    set_status(session_factory, job_id, JobStatus.CANCELLING)
    assert post(client, job_id, [metric_event(1, 3, loss=1.5)]).status_code == 200
    assert loss_series(client, job_id) == [[3, 1.5]]


def test_a_replayed_event_never_rewrites_a_point_and_only_a_live_retrain_replaces_one(
    client: TestClient, started_job: Any, session_factory: sessionmaker[Session]
) -> None:
    job_id = started_job()
    assert post(client, job_id, [metric_event(1, 1, loss=2.0)]).status_code == 200
    # the same seq again with another value: a replay, ignored
    assert post(client, job_id, [metric_event(1, 1, loss=12345.0)]).status_code == 200
    assert loss_series(client, job_id) == [[1, 2.0]]
    # a later event at step 1 while the job runs: a guard rollback or resume trained it again
    assert post(client, job_id, [metric_event(2, 1, loss=1.5)]).status_code == 200
    assert loss_series(client, job_id) == [[1, 1.5]]
    set_status(session_factory, job_id, JobStatus.SUCCEEDED)
    assert post(client, job_id, [metric_event(3, 1, loss=12345.0)]).status_code == 409
    assert loss_series(client, job_id) == [[1, 1.5]]


@pytest.mark.parametrize(
    "path", [".", "", "..", "/etc", "adapter/../..", "./adapter", "adapter//x", "adapter\\..", "a/./b", 7]
)
def test_an_artifact_event_must_name_a_plain_path_inside_the_run_directory(
    client: TestClient, started_job: Any, tmp_path: Path, path: object
) -> None:
    job_id = started_job(run_dir=tmp_path)
    (tmp_path / "adapter").mkdir()
    event = {"seq": 1, "kind": "artifact", "step": 1, "ts": 1.0, "payload": {"name": "adapter", "path": path}}
    answer = post(client, job_id, [event])
    assert answer.status_code == 422, answer.text
    assert "events[0].payload.path" in answer.json()["problems"]
    assert client.get(f"/api/jobs/{job_id}/adapter").status_code == 200


def test_an_artifact_event_with_a_plain_path_is_stored(client: TestClient, started_job: Any) -> None:
    job_id = started_job()
    event = {
        "seq": 1,
        "kind": "artifact",
        "step": 1,
        "ts": 1.0,
        "payload": {"name": "adapter", "path": "adapter"},
    }
    assert post(client, job_id, [event]).status_code == 200


class RecordingBody:
    """A request body that counts how much of it the server pulled."""

    def __init__(self, chunks: int, chunk: bytes) -> None:
        self.chunks, self.chunk, self.pulled = chunks, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"events": ['
        for _ in range(self.chunks):
            self.pulled += 1
            yield self.chunk
        yield b"]}"


@pytest.mark.parametrize(("token", "expected"), [("forged", 401), ("test-token", 409)])
def test_a_refused_token_is_answered_before_the_body_is_read(
    app: FastAPI,
    client: TestClient,
    started_job: Any,
    session_factory: sessionmaker[Session],
    token: str,
    expected: int,
) -> None:
    job_id = started_job()
    if expected == 409:
        set_status(session_factory, job_id, JobStatus.FAILED)
    body = RecordingBody(100, b" " * 1024)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # pulls the body only as the app receives it
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.post(
                f"/api/jobs/{job_id}/events",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )

    answer = asyncio.run(send())
    assert answer.status_code == expected, answer.text
    assert body.pulled == 0, f"{body.pulled} KiB of the body were read before refusing the token"
