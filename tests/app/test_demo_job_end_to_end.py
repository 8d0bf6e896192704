"""The demo job through the whole product: HTTP API → scheduler → real `python -m worker.train` → ingest.

No fakes: the real app on a live uvicorn, its scheduler, the real training child doing 4-bit QLoRA on CPU.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.waiting import wait_until

pytestmark = pytest.mark.training


@pytest.fixture
def settings(tmp_path, database_url: str | None) -> Settings:  # type: ignore[no-untyped-def]
    """The real worker module on one CPU slot."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        scheduler_enabled=True,
        cpu_slots=1,
        gpu_slots="",
        cancel_grace_s=60,
    )


def _wait_job(client: httpx.Client, job_id: int, done: Any, timeout: float, what: str) -> dict[str, Any]:
    """GET the job every half second until `done(job)`; the job then."""
    job: dict[str, Any] = wait_until(
        lambda: client.get(f"/api/jobs/{job_id}").json(), timeout, f"job {job_id}: {what}", 0.5, until=done
    )
    return job


def test_the_demo_job_trains_to_success_and_its_adapter_downloads(live_server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        created = client.post("/api/jobs/demo")
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        job = _wait_job(
            client, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), 240, "the end"
        )
        assert job["status"] == "succeeded", (job["failure_reason"], job.get("stderr_tail"))

        series = client.get(f"/api/jobs/{job_id}/metrics", params={"max_points": 2000}).json()["series"]
        steps = job["total_steps"]
        for key in ("loss", "grad_norm", "learning_rate", "rss_gb", "tokens_per_second"):
            assert len(series.get(key, [])) == steps, (key, len(series.get(key, [])))
        losses = [v for _, v in series["loss"]]
        assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
        assert series["eval_loss"], "no eval loss stored"

        zipped = client.get(f"/api/jobs/{job_id}/adapter")
        assert zipped.status_code == 200
        assert zipped.headers["content-type"] == "application/zip"
        names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
        assert any(n.endswith("adapter_model.safetensors") for n in names), names
        assert any(n.endswith("adapter_config.json") for n in names), names
        assert any(n.endswith("README.md") for n in names), names


def test_cancelling_a_training_job_leaves_it_cancelled_with_a_checkpoint(live_server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        demo = client.get("/api/presets").json()["demo"]
        demo["training"].update({"max_steps": 2000, "save_steps": 1000, "eval_steps": 0})
        job_id = client.post("/api/jobs", json=demo).json()["id"]
        _wait_job(
            client, job_id, lambda j: j["status"] == "running" and (j["last_step"] or 0) >= 3, 180, "step 3"
        )

        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        job = _wait_job(
            client, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), 90, "the end"
        )
        assert job["status"] == "cancelled", (job["failure_reason"], job.get("stderr_tail"))
        assert job["exit_code"] == 3

        checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()
        assert checkpoints, "cancel saved no complete checkpoint"
        events = client.get(f"/api/jobs/{job_id}/events", params={"kinds": "checkpoint"}).json()
        assert events and events[-1]["step"] >= 3
