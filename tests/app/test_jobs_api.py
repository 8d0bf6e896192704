"""The jobs REST API: create (JSON/YAML), validate, list, cancel/resume, clone, logs, adapter download."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.models import Job
from app.settings import Settings


def _count_jobs(client: TestClient) -> int:
    return len(client.get("/api/jobs").json())


def test_a_json_config_creates_a_queued_job(client: TestClient) -> None:
    r = client.post("/api/jobs", json={"name": "json run", "training": {"max_steps": 7}})
    assert r.status_code == 201
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    detail = client.get(f"/api/jobs/{job_id}").json()
    assert detail["name"] == "json run"
    assert detail["config"]["training"]["max_steps"] == 7
    assert detail["config"]["lora"]["r"] == 16  # defaults are filled in
    assert detail["queued_at"] is not None


def test_a_yaml_config_creates_a_job_and_keeps_the_text(client: TestClient) -> None:
    text = "name: yaml run\nresources:\n  priority: 5\n"
    r = client.post("/api/jobs", content=text, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201
    detail = client.get(f"/api/jobs/{r.json()['id']}").json()
    assert detail["config_text"] == text
    assert detail["priority"] == 5


def test_an_invalid_config_answers_422_with_problems_and_creates_nothing(client: TestClient) -> None:
    r = client.post("/api/jobs", json={"training": {"learning_rate": -1}, "lora": {"rank": 8}})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert "training.learning_rate" in problems
    assert "lora.rank" in problems and "unknown key" in problems["lora.rank"]
    assert _count_jobs(client) == 0


def test_unparseable_yaml_is_a_422_not_a_crash(client: TestClient) -> None:
    r = client.post("/api/jobs", content="training: [unclosed", headers={"Content-Type": "text/yaml"})
    assert r.status_code == 422
    assert "cannot parse" in r.json()["problems"][""]
    assert _count_jobs(client) == 0


def test_a_config_over_the_size_limit_is_refused_with_413(settings: Settings, client: TestClient) -> None:
    body = json.dumps({"name": "x" * 100, "pad": "y" * (settings.max_config_bytes + 10)})
    r = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert _count_jobs(client) == 0


def test_unknown_job_ids_answer_404_with_a_message(client: TestClient) -> None:
    for method, path in [
        ("get", "/api/jobs/999"),
        ("post", "/api/jobs/999/cancel"),
        ("get", "/api/jobs/999/metrics"),
        ("get", "/api/jobs/999/adapter"),
    ]:
        r = getattr(client, method)(path)
        assert r.status_code == 404, path
        assert "999" in r.json()["detail"]


def test_jobs_are_listed_newest_first_and_filter_by_status(client: TestClient) -> None:
    ids = [client.post("/api/jobs", json={"name": f"j{i}"}).json()["id"] for i in range(3)]
    client.post(f"/api/jobs/{ids[0]}/cancel")
    listed = client.get("/api/jobs").json()
    assert [j["id"] for j in listed] == list(reversed(ids))
    assert [j["id"] for j in client.get("/api/jobs?status=cancelled").json()] == [ids[0]]
    assert client.get("/api/jobs?status=bogus").status_code == 422


def test_cancelling_a_queued_job_cancels_it_and_a_second_cancel_is_a_409(client: TestClient) -> None:
    job_id = client.post("/api/jobs/demo").json()["id"]
    r = client.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


def test_cancelling_a_running_job_asks_it_to_stop(client: TestClient, started_job, move_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    move_job(job_id, JobStatus.RUNNING)
    r = client.post(f"/api/jobs/{job_id}/cancel")
    assert r.json()["status"] == "cancelling"
    assert client.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelling"  # idempotent


def test_resume_requeues_a_failed_job_and_refuses_a_succeeded_one(
    client: TestClient, started_job, move_job
) -> None:  # type: ignore[no-untyped-def]
    failed = started_job(name="f")
    move_job(failed, JobStatus.FAILED, reason="worker lost")
    r = client.post(f"/api/jobs/{failed}/resume")
    assert r.status_code == 200
    assert r.json()["status"] == "queued"
    assert r.json()["failure_reason"] is None
    done = started_job(name="s", token="other")
    move_job(done, JobStatus.SUCCEEDED)
    refused = client.post(f"/api/jobs/{done}/resume")
    assert refused.status_code == 409
    assert "clone" in refused.json()["detail"]


def test_a_transition_checks_the_status_it_read(session_factory: sessionmaker[Session], started_job) -> None:  # type: ignore[no-untyped-def]
    from app.jobs import service
    from app.jobs.status import TransitionError

    job_id = started_job()
    with session_factory() as stale, session_factory() as fresh:
        stale_job = stale.get(Job, job_id)
        assert stale_job is not None and stale_job.status == "starting"
        stale.commit()  # ends the read; the object keeps the values it read (expire_on_commit=False)
        fresh_job = fresh.get(Job, job_id)
        assert fresh_job is not None
        service.transition(fresh, job=fresh_job, to=JobStatus.FAILED, reason="launch failed")
        fresh.commit()
        try:
            service.transition(stale, job=stale_job, to=JobStatus.RUNNING)
        except TransitionError as exc:
            assert "meanwhile" in str(exc)
        else:
            raise AssertionError("a stale transition overwrote another process's decision")


def test_clone_copies_the_config_with_overrides_and_records_the_parent(client: TestClient) -> None:
    parent = client.post("/api/jobs", json={"name": "p", "training": {"learning_rate": 0.001}}).json()["id"]
    r = client.post(f"/api/jobs/{parent}/clone", json={"training.learning_rate": 0.0001, "lora.r": 8})
    assert r.status_code == 201
    child = client.get(f"/api/jobs/{r.json()['id']}").json()
    assert child["parent_job_id"] == parent
    assert child["config"]["training"]["learning_rate"] == 0.0001
    assert child["config"]["lora"]["r"] == 8
    bad = client.post(f"/api/jobs/{parent}/clone", json={"training.nope": 1})
    assert bad.status_code == 422
    assert "training.nope" in bad.json()["problems"]


def test_logs_show_the_tail_of_the_worker_stderr(client: TestClient, started_job, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stderr.log").write_text("".join(f"line {i}\n" for i in range(500)))
    job_id = started_job(run_dir=run_dir)
    tail = client.get(f"/api/jobs/{job_id}/logs").json()["stderr_tail"].splitlines()
    assert len(tail) == 200
    assert tail[-1] == "line 499"
    assert client.get(f"/api/jobs/{job_id}").json()["stderr_tail"].endswith("line 499")


def _set_adapter(factory: sessionmaker[Session], job_id: int, path: str) -> None:
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.adapter_path = path
        s.commit()


def test_the_adapter_downloads_as_a_zip(
    client: TestClient, started_job, session_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    job_id = started_job(run_dir=run_dir)
    assert client.get(f"/api/jobs/{job_id}/adapter").status_code == 404  # not trained yet
    (run_dir / "adapter" / "sub").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    (run_dir / "adapter" / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    _set_adapter(session_factory, job_id, "adapter")
    r = client.get(f"/api/jobs/{job_id}/adapter")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    assert f"job-{job_id}" in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["adapter_config.json", "sub/weights.bin"]
        assert zf.read("sub/weights.bin") == b"\x00\x01" * 1000
    assert list((client.app.state.settings.data_dir / "tmp").iterdir()) == []  # type: ignore[attr-defined]


def test_an_adapter_path_outside_the_run_dir_is_refused(
    client: TestClient, started_job, session_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.txt").write_text("do not serve")
    job_id = started_job(run_dir=run_dir)
    for path in ("../secret", str(tmp_path / "secret")):
        _set_adapter(session_factory, job_id, path)
        r = client.get(f"/api/jobs/{job_id}/adapter")
        assert r.status_code == 409, path
        assert "outside" in r.json()["detail"]


def test_a_symlink_inside_the_adapter_pointing_out_is_refused(
    client: TestClient, started_job, session_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "ok.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("do not serve")
    (run_dir / "adapter" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    job_id = started_job(run_dir=run_dir)
    _set_adapter(session_factory, job_id, "adapter")
    r = client.get(f"/api/jobs/{job_id}/adapter")
    assert r.status_code == 409
    assert "leak.txt" in r.json()["detail"]


def test_demo_presets_health_and_openapi_are_served(client: TestClient) -> None:
    demo = client.post("/api/jobs/demo")
    assert demo.status_code == 201
    presets = client.get("/api/presets").json()
    assert presets["demo"]["model"]["name"] == "preset:tiny-gemma3n"
    assert any(m["name"] == "preset:tiny-gemma3n" for m in presets["models"])
    assert client.get("/api/health").json() == {"ok": True, "db": "ok", "scheduler": {"enabled": False}}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/jobs/{job_id}/events" in paths and "/api/jobs/{job_id}/stream" in paths
