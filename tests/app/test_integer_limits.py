"""Numbers from outside that land in INTEGER columns stay within 32 bits (PostgreSQL's INTEGER): a bigger one
is a 404 or a 422 on SQLite and PostgreSQL alike, never a database error (CI runs this on both)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

AUTH = {"Authorization": "Bearer test-token"}


def test_a_job_id_beyond_32_bits_is_not_found(client: TestClient) -> None:
    for job_id in (2**31 - 1, 2**31, 2**40):
        assert client.get(f"/api/jobs/{job_id}").status_code == 404, job_id
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 404, job_id


def test_event_seq_and_step_beyond_32_bits_are_refused_and_the_largest_allowed_is_stored(
    client: TestClient, started_job: Any
) -> None:
    job_id = started_job()
    for field, value in (("seq", 2**31), ("step", 2**31)):
        event = {"seq": 1, "kind": "log", "step": 0, "ts": 1.0, "payload": {"message": "x"}, field: value}
        answer = client.post(f"/api/jobs/{job_id}/events", json={"events": [event]}, headers=AUTH)
        assert answer.status_code == 422, answer.text
        assert f"events[0].{field}" in answer.json()["problems"]
    edge = {"seq": 2**31 - 1, "kind": "metric", "step": 2**31 - 1, "ts": 1.0, "payload": {"loss": 1.0}}
    answer = client.post(f"/api/jobs/{job_id}/events", json={"events": [edge]}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["last_seq"] == 2**31 - 1
