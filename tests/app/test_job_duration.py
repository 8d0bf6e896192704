"""A run's duration in its summary (app/jobs/schemas.py): start to finish, to now while it runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.jobs.schemas import job_duration
from app.models import Job

T0 = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def test_duration_runs_from_the_start_to_the_finish_or_now() -> None:
    assert job_duration(Job(status="queued")) is None
    running = Job(status="running", starting_at=T0, running_at=T0 + timedelta(seconds=5))
    assert job_duration(running, now=T0 + timedelta(seconds=65)) == 60.0
    done = Job(
        status="succeeded", running_at=T0.replace(tzinfo=None), finished_at=(T0 + timedelta(minutes=2))
    )
    assert job_duration(done) == 120.0  # SQLite hands back naive datetimes: they are UTC
    assert job_duration(Job(status="failed", starting_at=T0)) is None  # ended, finish time unknown
