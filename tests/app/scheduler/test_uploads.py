"""PUT /api/jobs/{id}/artifacts/...: a remote worker's outputs land in its RUN_DIR, and nothing else does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs.status import JobStatus
from app.settings import Settings
from worker.train.remote import files_to_upload, upload_outputs

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
def job_run(client: TestClient, started_job: Any, tmp_path: Path) -> tuple[int, Path]:
    """A starting job (token 'test-token') with an empty run directory."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return started_job(run_dir=run_dir), run_dir


def test_the_job_token_uploads_adapter_files_into_its_run_dir(
    client: TestClient, job_run: tuple[int, Path]
) -> None:
    job_id, run_dir = job_run
    body = bytes(range(256)) * 1000
    answer = client.put(
        f"/api/jobs/{job_id}/artifacts/adapter/adapter_model.safetensors", content=body, headers=AUTH
    )
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"path": "adapter/adapter_model.safetensors", "bytes": len(body)}
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == body
    assert [p.name for p in (run_dir / "adapter").iterdir()] == ["adapter_model.safetensors"]  # no temp left
    nested = client.put(
        f"/api/jobs/{job_id}/artifacts/checkpoints/checkpoint-4/COMPLETE", content=b"{}", headers=AUTH
    )
    assert nested.status_code == 201
    assert (run_dir / "checkpoints" / "checkpoint-4" / "COMPLETE").read_bytes() == b"{}"


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic x"}, 401)],
)
def test_uploads_without_the_job_token_are_refused(
    client: TestClient, job_run: tuple[int, Path], headers: dict[str, str], status: int
) -> None:
    job_id, run_dir = job_run
    answer = client.put(f"/api/jobs/{job_id}/artifacts/outcome.json", content=b"{}", headers=headers)
    assert answer.status_code == status
    assert not (run_dir / "outcome.json").exists()


@pytest.mark.parametrize(
    "relative",
    [
        "job.json",
        "config.json",
        "adapter",
        "events.jsonl",
        "adapter/../job.json",
        "adapter/%2e%2e/%2e%2e/x",
        "elsewhere/x",
    ],
)
def test_only_outputs_may_be_uploaded_never_the_token_file_or_paths_outside(
    client: TestClient, job_run: tuple[int, Path], relative: str
) -> None:
    job_id, run_dir = job_run
    (run_dir / "job.json").write_text("original")
    answer = client.put(f"/api/jobs/{job_id}/artifacts/{relative}", content=b"evil", headers=AUTH)
    assert answer.status_code in (404, 422), answer.text
    assert (run_dir / "job.json").read_text() == "original"
    assert not any(p.read_bytes() == b"evil" for p in run_dir.rglob("*") if p.is_file())


def test_a_link_inside_the_adapter_dir_cannot_redirect_an_upload_outside(
    client: TestClient, job_run: tuple[int, Path], tmp_path: Path
) -> None:
    job_id, run_dir = job_run
    outside = tmp_path / "outside"
    outside.mkdir()
    (run_dir / "adapter").symlink_to(outside)
    answer = client.put(f"/api/jobs/{job_id}/artifacts/adapter/x.bin", content=b"evil", headers=AUTH)
    assert answer.status_code == 422
    assert list(outside.iterdir()) == []


def test_a_finished_job_accepts_no_more_uploads(
    client: TestClient, job_run: tuple[int, Path], move_job: Any
) -> None:
    job_id, run_dir = job_run
    move_job(job_id, JobStatus.FAILED, "worker lost")
    answer = client.put(f"/api/jobs/{job_id}/artifacts/outcome.json", content=b"{}", headers=AUTH)
    assert answer.status_code == 409
    assert "uploads are accepted only while its worker runs" in answer.json()["detail"]


def test_a_file_over_the_limit_is_refused_and_leaves_nothing(
    client: TestClient, job_run: tuple[int, Path], settings: Settings
) -> None:
    job_id, run_dir = job_run
    settings.max_artifact_bytes = 1000
    answer = client.put(f"/api/jobs/{job_id}/artifacts/adapter/big.bin", content=b"x" * 1001, headers=AUTH)
    assert answer.status_code == 413
    assert not (run_dir / "adapter").exists() or list((run_dir / "adapter").iterdir()) == []


def test_the_worker_uploader_sends_adapter_and_complete_checkpoints_then_the_outcome(tmp_path: Path) -> None:
    run = tmp_path / "node"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "a.bin").write_bytes(b"a")
    done = run / "checkpoints" / "checkpoint-2"
    done.mkdir(parents=True)
    (done / "COMPLETE").write_text("{}")
    (done / "w.bin").write_bytes(b"w")
    torn = run / "checkpoints" / "checkpoint-3"  # no marker: a kill mid-save; never uploaded
    torn.mkdir()
    (torn / "w.bin").write_bytes(b"partial")
    (run / "outcome.json").write_text("{}")
    (run / "events.jsonl").write_text("")
    assert files_to_upload(run) == [
        "adapter/a.bin",
        "checkpoints/checkpoint-2/COMPLETE",
        "checkpoints/checkpoint-2/w.bin",
        "outcome.json",
    ]


def test_the_worker_uploader_round_trips_through_a_live_app(
    live_server: Any, started_job: Any, tmp_path: Path
) -> None:
    app_run = tmp_path / "app-run"
    app_run.mkdir()
    job_id = started_job(run_dir=app_run)
    node = tmp_path / "node"
    (node / "adapter").mkdir(parents=True)
    (node / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00\x01" * 5000)
    (node / "outcome.json").write_text('{"status": "succeeded"}')
    (node / "job.json").write_text(
        f'{{"job_id": {job_id}, "app_url": "{live_server.url}", "token": "test-token"}}'
    )
    sent = upload_outputs(node)
    assert sent == ["adapter/adapter_model.safetensors", "outcome.json"]
    assert (app_run / "adapter" / "adapter_model.safetensors").read_bytes() == b"\x00\x01" * 5000
    assert (app_run / "outcome.json").read_text() == '{"status": "succeeded"}'


def test_the_run_plan_travels_with_a_remote_run_so_a_resume_elsewhere_keeps_its_choices(
    tmp_path: Path,
) -> None:
    from app.scheduler.uploads import allowed_relative_path

    run = tmp_path / "node"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    (run / "outcome.json").write_text("{}")
    assert files_to_upload(run) == ["plan.json", "outcome.json"]
    assert allowed_relative_path("plan.json") == "plan.json"
