"""The worker side of a browser test, at the seam we own: jobs moved to `starting` in the app's own database
(as the scheduler leaves them) and events POSTed with their worker token (as the training process reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from app.db import make_engine, make_session_factory
from app.models import Job
from tests.app.conftest import make_started_job

TOKEN = "browser-test-worker-token"


def started_jobs(data_dir: Path, names: list[str], **columns: Any) -> list[int]:
    """Jobs in `starting` with TOKEN, in the app's SQLite database under `data_dir`; `columns` set on each."""
    engine = make_engine(f"sqlite:///{data_dir / 'tuneboard.db'}")
    factory = make_session_factory(engine)
    ids = [make_started_job(factory, token=TOKEN, name=name) for name in names]
    if columns:
        with factory() as session:
            for job_id in ids:
                job = session.get(Job, job_id)
                assert job is not None
                for key, value in columns.items():
                    setattr(job, key, value)
            session.commit()
    engine.dispose()
    return ids


def post(url: str, job_id: int, events: list[dict[str, object]]) -> None:
    """POST events as the job's worker does; 200 or the test fails with the app's answer."""
    answer = httpx.post(
        f"{url}/api/jobs/{job_id}/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def metric(seq: int, step: int, **values: float | str) -> dict[str, object]:
    """A metric event."""
    return {"seq": seq, "kind": "metric", "step": step, "ts": 1_700_000_000.0 + seq, "payload": values}
