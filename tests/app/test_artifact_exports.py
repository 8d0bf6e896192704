"""Metric exports page through the database in chunks (keyset pagination), losing and doubling nothing."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import ArtifactError, stream_zip, zip_members
from app.models import MetricPoint


def test_metric_exports_page_through_many_points_in_chunks(
    session_factory: sessionmaker[Session], started_job: Any
) -> None:
    from app.artifacts import metrics_csv, metrics_json

    job_id = started_job()
    with session_factory() as session:
        session.add_all(
            MetricPoint(job_id=job_id, key=key, step=step, value=step * 0.5, ts=0.0)
            for step in range(1, 251)
            for key in ("a", "b", "c")
            if not (key == "b" and step % 7 == 0)  # gaps: keys without a point at some steps
        )
        session.commit()
    text = "".join(metrics_csv(session_factory, job_id, chunk_rows=13))  # chunk edges fall inside steps
    rows = text.strip().split("\n")
    assert rows[0] == "step,a,b,c" and len(rows) == 251
    assert rows[7] == "7,3.5,,3.5" and rows[8] == "8,4.0,4.0,4.0"
    body = json.loads("".join(metrics_json(session_factory, job_id, chunk_rows=13)))
    assert [len(body["series"][k]) for k in "abc"] == [250, 250 - 35, 250]
    assert body["series"]["c"][-1] == [250, 125.0]


def test_non_finite_values_sent_by_a_worker_are_exported_as_nan_and_inf(
    client: Any, started_job: Any
) -> None:
    job_id = started_job(token="tok")
    events = [
        {"seq": 1, "kind": "metric", "step": 1, "ts": 1.0, "payload": {"loss": 2.5, "grad_norm": "inf"}},
        {"seq": 2, "kind": "metric", "step": 2, "ts": 2.0, "payload": {"loss": "nan", "grad_norm": "-inf"}},
    ]
    answer = client.post(
        f"/api/jobs/{job_id}/events", json={"events": events}, headers={"Authorization": "Bearer tok"}
    )
    assert answer.status_code == 200, answer.text
    assert (
        client.get(f"/api/jobs/{job_id}/metrics.csv").text == "step,grad_norm,loss\n1,inf,2.5\n2,-inf,nan\n"
    )
    body = client.get(f"/api/jobs/{job_id}/metrics.json").json()
    assert body == {
        "job_id": job_id,
        "series": {"grad_norm": [[1, "inf"], [2, "-inf"]], "loss": [[1, 2.5], [2, "nan"]]},
    }


def test_a_streamed_zip_unpacks_to_the_same_files_and_links_outside_are_refused_first(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint-3"
    (source / "nested").mkdir(parents=True)
    (source / "weights.bin").write_bytes(os.urandom(300_000))
    (source / "nested" / "state.json").write_text('{"step": 3}')
    data = b"".join(stream_zip(zip_members(source), chunk_bytes=65_536))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == ["nested/state.json", "weights.bin"]
        assert zf.read("weights.bin") == (source / "weights.bin").read_bytes()
    (tmp_path / "secret").write_text("not yours")
    (source / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactError, match="links outside"):
        zip_members(source)  # raised before a single byte of the archive exists
