"""Numbers from outside never become a 500: integer cursors beyond the columns are 422, and an event's
timestamp that no calendar can show is replaced at ingest, while one already stored still renders."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.models import JobEvent

AUTH = {"Authorization": "Bearer test-token"}


@pytest.mark.parametrize(
    "url",
    [
        "/api/jobs/{id}/metrics?after_step=9223372036854775808",
        "/api/jobs/{id}/metrics?after_step=2147483648",
        "/api/jobs/{id}/metrics?after_step=-9223372036854775809",
        "/api/jobs/{id}/events?after_seq=18446744073709551616",
        "/api/jobs/{id}/events?after_seq=2147483648",
        "/jobs/{id}/partials/events?after_seq=18446744073709551616",
    ],
)
def test_an_integer_cursor_beyond_the_columns_is_422(client: TestClient, started_job: Any, url: str) -> None:
    job_id = started_job()
    answer = client.get(url.format(id=job_id))
    assert answer.status_code == 422, answer.text


def test_the_largest_cursors_are_still_answered(client: TestClient, started_job: Any) -> None:
    job_id = started_job()
    assert client.get(f"/api/jobs/{job_id}/metrics?after_step=2147483647").json()["series"] == {}
    assert client.get(f"/api/jobs/{job_id}/events?after_seq=2147483647").json() == []


@pytest.mark.parametrize("ts", [1e300, -1e300, 1.0, 4_102_444_800.0])
def test_an_event_time_outside_any_sane_range_is_replaced_by_the_servers(
    client: TestClient, started_job: Any, ts: float
) -> None:
    job_id = started_job()
    event = {"seq": 1, "kind": "log", "step": 0, "ts": ts, "payload": {"message": "hello"}}
    answer = client.post(f"/api/jobs/{job_id}/events", json={"events": [event]}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    (stored,) = client.get(f"/api/jobs/{job_id}/events").json()
    assert abs(stored["ts"] - time.time()) < 60
    assert client.get(f"/jobs/{job_id}").status_code == 200


def test_a_sane_event_time_is_kept(client: TestClient, started_job: Any) -> None:
    job_id = started_job()
    event = {"seq": 1, "kind": "log", "step": 0, "ts": 1_700_000_000.5, "payload": {"message": "hello"}}
    assert (
        client.post(f"/api/jobs/{job_id}/events", json={"events": [event]}, headers=AUTH).status_code == 200
    )
    assert client.get(f"/api/jobs/{job_id}/events").json()[0]["ts"] == 1_700_000_000.5


@pytest.mark.parametrize("ts", [1e300, -1e300])
def test_the_job_page_renders_an_event_whose_stored_time_cannot_be_a_date(
    client: TestClient, started_job: Any, session_factory: sessionmaker[Session], ts: float
) -> None:
    job_id = started_job()
    with session_factory() as session:  # stored before ingest checked it
        session.add(JobEvent(job_id=job_id, seq=1, step=0, kind="log", payload={"message": "old"}, ts=ts))
        session.commit()
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "old" in page.text
    assert client.get(f"/jobs/{job_id}/partials/events").status_code == 200


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"seq": 1, "kind": ["metric"], "step": 1, "payload": {}}, "events[0].kind"),
        ({"seq": 1, "kind": {"a": 1}, "step": 1, "payload": {}}, "events[0].kind"),
        ({"seq": 1, "kind": "metric", "step": 1, "payload": {"loss": [1.0]}}, "events[0].payload.loss"),
        ({"seq": 1, "kind": "metric", "step": 1, "payload": {"loss": {"v": 1}}}, "events[0].payload.loss"),
    ],
)
def test_an_event_field_of_the_wrong_json_type_is_422_naming_it(
    client: TestClient, started_job: Any, event: dict[str, Any], field: str
) -> None:
    job_id = started_job()
    answer = client.post(f"/api/jobs/{job_id}/events", json={"events": [event]}, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["problems"]
