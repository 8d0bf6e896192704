"""The single ingest writer: group commit across jobs, each acknowledged batch stored exactly once."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.metrics.ingest import IngestError, parse_batch
from app.metrics.writer import Batch, IngestWriter, writer_for
from app.models import MetricPoint, MetricSeries
from tests.app.conftest import make_started_job, set_status

AUTH = {"Authorization": "Bearer test-token"}


def metric(seq: int, step: int, **values: float) -> dict[str, Any]:
    return {"seq": seq, "kind": "metric", "step": step, "ts": 1_700_000_000.0, "payload": values}


def stored_points(factory: sessionmaker[Session], job_id: int) -> int:
    with factory() as s:
        return int(
            s.scalar(select(func.count()).select_from(MetricPoint).where(MetricPoint.job_id == job_id)) or 0
        )


def test_ten_jobs_posting_at_once_are_group_committed_and_every_acknowledged_point_is_stored_once(
    live_server, session_factory
) -> None:  # type: ignore[no-untyped-def]
    jobs = [make_started_job(session_factory, token=f"token-{i}", name=f"j{i}") for i in range(10)]
    batches, per_batch = 8, 50
    acked: dict[int, int] = {job_id: 0 for job_id in jobs}
    errors: list[str] = []

    def report(i: int, job_id: int) -> None:
        headers = {"Authorization": f"Bearer token-{i}"}
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            for b in range(batches):
                events = [
                    metric(b * per_batch + k + 1, b * per_batch + k, loss=float(k)) for k in range(per_batch)
                ]
                for _attempt in range(2):  # every batch twice: a retry after a lost answer
                    r = http.post(f"/api/jobs/{job_id}/events", json={"events": events}, headers=headers)
                    if r.status_code != 200:
                        errors.append(r.text)
                        return
                    acked[job_id] += r.json()["accepted"]

    threads = [threading.Thread(target=report, args=(i, job_id)) for i, job_id in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    writer = writer_for(live_server.app.state.session_factory)
    for job_id in jobs:
        assert acked[job_id] == batches * per_batch  # the retries were acknowledged as no-ops
        assert stored_points(session_factory, job_id) == batches * per_batch
        with session_factory() as s:
            summary = s.get(MetricSeries, (job_id, "loss"))
            assert summary is not None and summary.points == batches * per_batch
    # 160 POSTs, fewer commits: batches of several jobs shared a transaction
    assert 0 < writer.groups < len(jobs) * batches * 2


def test_a_refused_batch_in_a_group_rolls_back_alone(session_factory) -> None:  # type: ignore[no-untyped-def]
    live, finished = make_started_job(session_factory), make_started_job(session_factory, name="done")
    set_status(session_factory, finished, JobStatus.CANCELLED)
    writer = IngestWriter(session_factory)
    events = parse_batch({"events": [metric(1, 1, loss=1.0), metric(2, 2, loss=0.5)]}, max_events=10)
    group = [
        Batch(job_id=live, authorization=AUTH["Authorization"], events=events),
        Batch(job_id=finished, authorization=AUTH["Authorization"], events=events),
        Batch(job_id=live, authorization="Bearer wrong", events=events),
    ]
    writer.write_group(group)
    assert group[0].done.result().accepted == 2
    with pytest.raises(IngestError) as refused:
        group[1].done.result()
    assert refused.value.status_code == 409
    with pytest.raises(IngestError) as wrong:
        group[2].done.result()
    assert wrong.value.status_code == 401
    assert stored_points(session_factory, live) == 2
    assert stored_points(session_factory, finished) == 0
    assert writer.groups == 1
