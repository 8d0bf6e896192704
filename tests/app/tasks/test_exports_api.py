"""Exports through the app: queued as scheduled tasks, followed, cancelled, and downloaded with a size and
a sha256 that the app computes itself (the run directory is worker-writable, so nothing there is trusted)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.models import Job, Task
from contract.config import JobConfig, config_to_dict
from contract.tasks import write_export_status
from tests.waiting import wait_until


def finished_job(
    factory: sessionmaker[Session], tmp_path: Path, *, status: str = "succeeded"
) -> tuple[int, Path]:
    """A job that succeeded (status set directly) with a run directory holding an adapter folder."""
    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text("{}")  # no tuneboard_quantization.json
    cfg = JobConfig.model_validate({"model": {"name": "preset:tiny-llama"}})
    with factory() as session:
        job = service.create_job(session, config=cfg, config_text=json.dumps(config_to_dict(cfg)))
        job.run_dir = str(run_dir)
        job.status = status
        session.commit()
        return job.id, run_dir


def published(run_dir: Path, name: str, files: dict[str, bytes]) -> Path:
    """An export as the worker leaves it: NAME/ with files, NAME.json saying succeeded (lying digests)."""
    folder = run_dir / "exports" / name
    folder.mkdir(parents=True)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    fake = [{"name": n, "size": 1, "sha256": "0" * 64} for n in files]
    write_export_status(
        run_dir, name, state="succeeded", stage="done", progress=1.0, message="ok", files=fake
    )
    return folder


def test_files_are_listed_and_downloaded_with_the_size_and_sha256_the_app_computes(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id, run_dir = finished_job(session_factory, tmp_path)
    blob = os.urandom(70_000)
    folder = published(run_dir, "gguf-q4_k_m", {"model-q4_k_m.gguf": blob, "Modelfile": b"FROM ./x\n"})
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (folder / "linked.txt").symlink_to(secret)  # a worker-made link to a file outside the export
    listing = client.get(f"/api/jobs/{job_id}/exports/gguf-q4_k_m").json()
    assert listing["state"] == "succeeded"
    files = {f["name"]: f for f in listing["files"]}
    assert set(files) == {"model-q4_k_m.gguf", "Modelfile"}  # the link is not offered
    gguf = files["model-q4_k_m.gguf"]
    assert (
        gguf["size"] == len(blob) and gguf["sha256"] == hashlib.sha256(blob).hexdigest()
    )  # not the worker's
    got = client.get(gguf["download_url"])
    assert got.status_code == 200 and got.content == blob
    assert got.headers["content-length"] == str(len(blob))
    assert got.headers["x-checksum-sha256"] == hashlib.sha256(blob).hexdigest()
    assert "attachment" in got.headers["content-disposition"]
    assert client.get(f"/api/jobs/{job_id}/exports/gguf-q4_k_m/files/linked.txt").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/exports/gguf-q4_k_m/files/..%2F..%2Fjob.json").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/exports/..%2Fadapter").status_code == 404
    every = {e["name"]: e["state"] for e in client.get(f"/api/jobs/{job_id}/exports").json()}
    assert every["gguf-q4_k_m"] == "succeeded" and every["merged"] == "none" and "gguf-lora-f16" in every


def test_a_failed_export_shows_its_numbers_and_offers_nothing(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id, run_dir = finished_job(session_factory, tmp_path)
    (run_dir / "exports" / "merged.rejected").mkdir(parents=True)
    (run_dir / "exports" / "merged.rejected" / "model.safetensors").write_bytes(b"x")
    parity = {"passed": False, "agreement": 0.5, "max_logit_diff": 3.2, "positions": 52, "prompts": 4}
    parity["tolerance"] = {"min_agreement": 0.99, "max_logit_diff": 0.05, "why": "test"}
    write_export_status(
        run_dir,
        "merged",
        state="failed",
        stage="parity",
        progress=1.0,
        message="parity FAILED",
        parity=parity,
    )
    body = client.get(f"/api/jobs/{job_id}/exports/merged").json()
    assert body["state"] == "failed" and body["files"] == [] and body["parity"]["max_logit_diff"] == 3.2
    assert client.get(f"/api/jobs/{job_id}/exports/merged/files/model.safetensors").status_code == 404
    page = client.get(f"/jobs/{job_id}/partials/exports").text
    assert "FAILED" in page and "3.2" in page and "model.safetensors" not in page


def test_requests_are_checked_before_anything_is_queued(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id, _ = finished_job(session_factory, tmp_path)
    bad_quant = client.post(f"/api/jobs/{job_id}/exports", json={"format": "gguf", "quant": "q2_k"})
    assert bad_quant.status_code == 422 and "q4_k_m" in bad_quant.json()["detail"]
    bad_format = client.post(f"/api/jobs/{job_id}/exports", json={"format": "onnx"})
    assert bad_format.status_code == 422
    assert client.get(f"/api/jobs/{job_id}/exports/gguf-q2_k").status_code == 404
    running_id, _ = finished_job(session_factory, tmp_path / "other", status="running")
    refused = client.post(f"/api/jobs/{running_id}/exports", json={"format": "merged"})
    assert refused.status_code == 409 and "succeeded" in refused.json()["detail"]
    with session_factory() as session:
        assert session.scalars(select(Task)).all() == []


def test_an_export_is_a_scheduled_task_that_reports_the_workers_refusal(
    client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    # the real `python -m worker.export`, launched by the app's task supervisor, on an adapter folder that
    # lacks its settings: the export refuses in plain words, the row and the status file say so
    job_id, run_dir = finished_job(session_factory, tmp_path)
    started = client.post(f"/api/jobs/{job_id}/exports", json={"format": "gguf", "quant": "q8_0"})
    assert started.status_code == 202, started.text
    assert started.json()["name"] == "gguf-q8_0" and started.json()["state"] in ("starting", "running")
    busy = client.post(f"/api/jobs/{job_id}/exports", json={"format": "merged"})
    assert busy.status_code in (409, 202)  # 409 while the first one still holds the job

    def ended() -> dict[str, object] | None:
        body = client.get(f"/api/jobs/{job_id}/exports/gguf-q8_0").json()
        return body if body["state"] == "failed" else None

    body = wait_until(ended, 60, "the export task to end")
    assert body is not None and "no finished adapter" in str(body["message"])

    def settled() -> Task | None:
        with session_factory() as session:
            task = session.scalars(select(Task).where(Task.job_id == job_id)).first()
            return task if task is not None and task.status == "failed" else None

    task = wait_until(settled, 30, "the task row to say failed")
    assert task is not None and task.kind == "export" and task.module == "worker.export"
    assert task.args[task.args.index("--quant") + 1] == "q8_0"
    assert "no finished adapter" in (task.failure_reason or "")
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="exports"' in page and "gguf-q8_0" in page


def test_a_queued_export_can_be_cancelled(
    client: TestClient,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.tasks.manager import TaskManager

    monkeypatch.setattr(TaskManager, "_keep_ticking", lambda self: None)  # nothing launches it
    monkeypatch.setattr(TaskManager, "nudge", lambda self: _done())
    job_id, run_dir = finished_job(session_factory, tmp_path)
    assert client.post(f"/api/jobs/{job_id}/exports", json={"format": "merged"}).status_code == 202
    assert client.post(f"/api/jobs/{job_id}/exports/gguf-f16/cancel").status_code == 409  # not that one
    assert client.post(f"/api/jobs/{job_id}/exports/merged/cancel").json()["cancelling"] is True
    with session_factory() as session:
        task = session.scalars(select(Task).where(Task.job_id == job_id)).one()
        assert task.status == "cancelled"
        job = session.get(Job, job_id)
        assert job is not None
    assert client.get(f"/api/jobs/{job_id}/exports/merged").json()["state"] == "failed"


async def _done() -> None:
    return None


@pytest.mark.training
def test_a_4bit_run_exports_merged_through_the_app_and_downloads_with_its_checksum(
    client: TestClient,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.app.tasks.test_takeaway import job_from_run
    from tests.worker.takeaway_run import preset_cache_dir
    from tests.worker.tasks.export_runs import quantized_run

    run = quantized_run("tiny-llama")
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(preset_cache_dir(run)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job_id, run_dir = job_from_run(client, session_factory, run, tmp_path, quantization="nf4")
    started = client.post(f"/api/jobs/{job_id}/exports", json={"format": "merged"})
    assert started.status_code == 202, started.text
    done = wait_until(
        lambda: client.get(f"/api/jobs/{job_id}/exports/merged").json(),
        300,
        "the merged export of a 4-bit run",
        until=lambda s: s["state"] not in ("starting", "running"),
    )
    assert done["state"] == "succeeded", done
    assert done["base"] == "dequantized" and done["parity"]["passed"]
    weights = next(f for f in done["files"] if f["name"] == "model.safetensors")
    got = client.get(weights["download_url"])
    assert hashlib.sha256(got.content).hexdigest() == weights["sha256"] == got.headers["x-checksum-sha256"]
    assert len(got.content) == weights["size"]
    page = client.get(f"/jobs/{job_id}").text
    assert "greedy-token agreement" in page and weights["sha256"] in page
