"""Hostile input: malformed configs, path tricks in downloads and logs, unknown ids, foreign worker tokens,
replayed batches, and secrets that must never be shown."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import ArtifactError, contained_path
from app.models import Job, JobEvent, MetricPoint
from tests.app.conftest import metric_event

JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}

BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True))
    + "lora:\n  target_modules: *g\n"
)


def job_rows(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


# (body, content type, the field the answer must name ("" for the whole config), words in its message)
HOSTILE_CONFIGS: list[tuple[str, dict[str, str], str, str]] = [
    ('{"training": {"learning_rate": "fast"}}', JSON, "training.learning_rate", "number"),
    ('{"training": {"max_steps": 1e30}}', JSON, "training.max_steps", ""),
    ('{"training": {"max_steps": 100000000000000000000}}', JSON, "training.max_steps", "at most"),
    ('{"training": {"learning_rate": 1e999}}', JSON, "training.learning_rate", "at most"),
    ('{"resources": {"gpus": -1}}', JSON, "resources.gpus", "at least 0"),
    ('{"training": {"lr": 0.1}}', JSON, "training.lr", "unknown key"),
    ('{"surprise": {}}', JSON, "surprise", "unknown key"),
    ('{"model": 42}', JSON, "model", ""),  # a hub id or a section; `model: gemma` is shorthand now
    ('{"lora": {"r": "sixteen"}}', JSON, "lora.r", "integer"),
    ('{"name": "' + "é" * 300 + '"}', JSON, "name", "at most 200 characters"),
    ('{"model": {"name": "' + "x" * 200_000 + '"}}', JSON, "model.name", "at most 4096 characters"),
    ('{"name": "nul\\u0000byte"}', JSON, "name", "NUL"),
    ('{"name": "\\ud800"}', JSON, "name", "unicode"),
    ("[" * 100_000 + "]" * 100_000, JSON, "", "nested too deeply"),
    ('{"training": {"max_steps": 1' + "0" * 5000 + "}}", JSON, "", "thousands of digits"),
    ("[1, 2, 3]", JSON, "", "mapping"),
    ("training: {max_steps: 1" + "0" * 5000 + "}", YAML, "", "thousands of digits"),
    ("[" * 5_000, YAML, "", "nested too deeply"),
    (BOMB, YAML, "", "expands to more than"),
    ("!!python/object/apply:os.system ['echo pwned']", YAML, "", "cannot parse"),
    ("model: {name: [1, 2]}", YAML, "model.name", ""),
    ('{"training": {"auto_micro_batch": true}}', JSON, "training.auto_micro_batch", "resources.gpus to 1"),
]


def test_hostile_configs_are_4xx_naming_the_problem_and_create_nothing(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    # one app for every case: a migrated database per case would cost more than the cases
    for body, headers, field, words in HOSTILE_CONFIGS:
        response = client.post("/api/jobs", content=body.encode("utf-8", "surrogatepass"), headers=headers)
        shown = body[:60]
        assert response.status_code == 422, (shown, response.text[:300])
        problems = response.json()["problems"]
        assert field in problems, (shown, problems)
        assert words.lower() in problems[field].lower(), (shown, problems)
        assert len(response.content) < 20_000, shown  # a huge rejected value is not echoed back whole
    assert job_rows(session_factory) == 0


def test_a_one_megabyte_config_is_refused_before_it_is_parsed(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    body = json.dumps({"name": "x" * 1_000_000})
    response = client.post("/api/jobs", content=body, headers=JSON)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert job_rows(session_factory) == 0


def test_unicode_names_are_accepted_and_come_back_unchanged(client: TestClient) -> None:
    name = "日本語 — émoji 🚀 \u202eRTL"
    created = client.post("/api/jobs", json={"name": name})
    assert created.status_code == 201
    assert client.get(f"/api/jobs/{created.json()['id']}").json()["name"] == name


def test_a_hostile_config_in_the_form_rerenders_and_creates_nothing(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    for text in ("[" * 5_000, BOMB, "training: {warmup: 99}"):
        response = client.post("/jobs/new", data={"mode": "text", "config_text": text})
        assert response.status_code == 422
        assert (
            "was not created" in response.text or "cannot parse" in response.text or "warmup" in response.text
        )
    fields = client.post("/jobs/new", data={"training.max_steps": "1" + "0" * 5000, "name": "x"})
    assert fields.status_code == 422
    assert job_rows(session_factory) == 0


def test_the_estimate_api_refuses_deep_json_with_a_422(client: TestClient) -> None:
    response = client.post("/api/estimate", content="[" * 100_000, headers=JSON)
    assert response.status_code == 422


# ---------------------------------------------------------------------------------------------------------
# Paths: traversal and symlinks


def test_contained_path_refuses_dotdot_absolute_paths_and_escaping_symlinks(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "outside").mkdir()
    (run_dir / "inside").mkdir()
    (run_dir / "escape").symlink_to(tmp_path / "outside")
    (run_dir / "inner-link").symlink_to(run_dir / "inside")
    assert contained_path(run_dir, "inside") == (run_dir / "inside").resolve()
    assert (
        contained_path(run_dir, "inner-link") == (run_dir / "inside").resolve()
    )  # a link that stays is fine
    for hostile in ("../outside", "inside/../../outside", str(tmp_path / "outside"), "escape", "escape/file"):
        with pytest.raises(ArtifactError, match="outside the run directory"):
            contained_path(run_dir, hostile)


def test_an_adapter_directory_linked_outside_the_run_dir_is_not_served(
    client: TestClient,
    started_job,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "private.txt").write_text("not yours")
    (run_dir / "adapter").symlink_to(tmp_path / "elsewhere")
    job_id = started_job(run_dir=run_dir)
    response = client.get(f"/api/jobs/{job_id}/adapter")
    assert response.status_code == 409
    assert "outside" in response.json()["detail"]
    assert list((client.app.state.settings.data_dir / "tmp").glob("*")) == []  # type: ignore[attr-defined]


def test_an_adapter_path_naming_the_whole_run_dir_is_not_zipped(
    client: TestClient,
    started_job,  # type: ignore[no-untyped-def]
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.json").write_text('{"token": "worker-secret"}')
    job_id = started_job(run_dir=run_dir)
    for adapter_path in (".", "adapter/..", str(run_dir)):
        with session_factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.adapter_path = adapter_path
            s.commit()
        response = client.get(f"/api/jobs/{job_id}/adapter")
        assert response.status_code == 409, adapter_path
        assert "worker-secret" not in response.text


def test_a_checkpoint_linked_outside_the_run_dir_is_not_served(
    client: TestClient,
    started_job,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "checkpoint-complete.json").write_text("{}")
    (run_dir / "checkpoints" / "checkpoint-5").symlink_to(outside)
    job_id = started_job(run_dir=run_dir)
    for name in ("checkpoint-5", "..", "checkpoint-5%2F..%2F..", "..%2F..%2Fetc"):
        response = client.get(f"/api/jobs/{job_id}/checkpoints/{name}.zip")
        assert response.status_code in (404, 409), (name, response.status_code)


def test_a_stderr_log_linked_elsewhere_is_never_shown(
    client: TestClient,
    started_job,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret contents\n")
    (run_dir / "stderr.log").symlink_to(secret)
    job_id = started_job(run_dir=run_dir)
    for url in (f"/api/jobs/{job_id}/logs", f"/api/jobs/{job_id}", f"/jobs/{job_id}"):
        response = client.get(url)
        assert response.status_code == 200
        assert "top secret" not in response.text
        assert "links outside the run directory" in response.text


# ---------------------------------------------------------------------------------------------------------
# Unknown ids, worker tokens, replays


def test_unknown_and_absurd_job_ids_are_404_everywhere(client: TestClient) -> None:
    for job_id in (999, 2**63, 10**30):
        for method, url in (
            ("GET", f"/api/jobs/{job_id}"),
            ("GET", f"/api/jobs/{job_id}/metrics"),
            ("GET", f"/api/jobs/{job_id}/events"),
            ("GET", f"/api/jobs/{job_id}/logs"),
            ("GET", f"/api/jobs/{job_id}/adapter"),
            ("POST", f"/api/jobs/{job_id}/cancel"),
            ("POST", f"/api/jobs/{job_id}/resume"),
            ("POST", f"/api/jobs/{job_id}/clone"),
            ("GET", f"/jobs/{job_id}"),
        ):
            response = client.request(method, url)
            assert response.status_code == 404, (method, url, response.status_code)
    assert client.get("/api/jobs/-1").status_code == 404
    assert client.get("/api/jobs/abc").status_code == 422


def test_a_worker_token_writes_only_its_own_jobs_events_and_artifacts(
    client: TestClient,
    started_job,
    session_factory: sessionmaker[Session],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    job_a = started_job(token="token-a", run_dir=tmp_path / "a")
    job_b = started_job(token="token-b", run_dir=tmp_path / "b")
    batch = {"events": [metric_event(1, 1, loss=1.0)]}
    as_a = {"Authorization": "Bearer token-a"}

    cross = client.post(f"/api/jobs/{job_b}/events", json=batch, headers=as_a)
    assert cross.status_code == 403
    assert f"belongs to job {job_a}" in cross.json()["detail"]
    assert (
        client.post(
            f"/api/jobs/{job_b}/events", json=batch, headers={"Authorization": "Bearer forged"}
        ).status_code
        == 401
    )
    assert client.post(f"/api/jobs/{job_b}/events", json=batch).status_code == 401
    upload = client.put(f"/api/jobs/{job_b}/artifacts/outcome.json", content=b"{}", headers=as_a)
    assert upload.status_code == 403
    assert not (tmp_path / "b" / "outcome.json").exists()
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(MetricPoint)) == 0
    assert "token-a" not in client.get(f"/api/jobs/{job_a}").text
    # its own job is fine
    assert client.post(f"/api/jobs/{job_a}/events", json=batch, headers=as_a).status_code == 200


def test_a_replayed_old_batch_is_a_no_op(
    client: TestClient,
    started_job,
    session_factory: sessionmaker[Session],  # type: ignore[no-untyped-def]
) -> None:
    job_id = started_job(token="t")
    auth = {"Authorization": "Bearer t"}
    first = [metric_event(1, 1, loss=2.0), {"seq": 2, "kind": "log", "step": 1, "payload": {"message": "hi"}}]
    second = [metric_event(3, 2, loss=1.5)]
    assert (
        client.post(f"/api/jobs/{job_id}/events", json={"events": first}, headers=auth).json()["accepted"]
        == 2
    )
    assert (
        client.post(f"/api/jobs/{job_id}/events", json={"events": second}, headers=auth).json()["accepted"]
        == 1
    )
    # the first batch again, even with different values: old seqs are ignored, nothing duplicates
    replay = [
        metric_event(1, 1, loss=99.0),
        {"seq": 2, "kind": "log", "step": 1, "payload": {"message": "again"}},
    ]
    answer = client.post(f"/api/jobs/{job_id}/events", json={"events": replay}, headers=auth).json()
    assert answer["accepted"] == 0 and answer["last_seq"] == 3
    with session_factory() as s:
        points = s.execute(select(MetricPoint.step, MetricPoint.value).order_by(MetricPoint.step)).all()
        events = s.scalars(select(JobEvent)).all()
        job = s.get(Job, job_id)
        assert job is not None and job.last_loss == 1.5
    assert [tuple(p) for p in points] == [(1, 2.0), (2, 1.5)]
    assert [e.payload["message"] for e in events] == ["hi"]


HUGE_NUMBER_EVENTS = [
    {"seq": 10**30, "kind": "metric", "step": 1, "payload": {"loss": 1}},
    {"seq": 1, "kind": "metric", "step": 10**30, "payload": {"loss": 1}},
    {"seq": 1, "kind": "metric", "step": 1, "payload": {"loss": 10**400}},
    {"seq": 1, "kind": "metric", "step": 1, "ts": 10**400, "payload": {"loss": 1}},
]


def test_ingest_refuses_numbers_no_column_can_hold(
    client: TestClient,
    started_job,  # type: ignore[no-untyped-def]
    session_factory: sessionmaker[Session],
) -> None:
    job_id = started_job(token="t")
    for event in HUGE_NUMBER_EVENTS:
        response = client.post(
            f"/api/jobs/{job_id}/events", json={"events": [event]}, headers={"Authorization": "Bearer t"}
        )
        assert response.status_code == 422, event
        assert list(response.json()["problems"])[0].startswith("events[0].")
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(MetricPoint)) == 0
    # summary fields inside payloads that no INTEGER column can hold are ignored, not a database error
    progress = {"seq": 1, "kind": "progress", "step": 1, "payload": {"step": 2**40, "total_steps": 2**40}}
    status = {"seq": 2, "kind": "status", "step": 1, "payload": {"status": "running", "total_steps": 2**35}}
    answer = client.post(
        f"/api/jobs/{job_id}/events",
        json={"events": [progress, status]},
        headers={"Authorization": "Bearer t"},
    )
    assert answer.status_code == 200, answer.text
    summary = client.get(f"/api/jobs/{job_id}").json()
    assert summary["last_step"] < 2**31 and summary["total_steps"] is None


# ---------------------------------------------------------------------------------------------------------
# Secrets are never shown


def test_secrets_in_the_environment_logs_and_config_are_masked(
    client: TestClient,
    started_job,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    hub_token = "hf_" + hashlib.sha256(b"x").hexdigest()[:34]
    monkeypatch.setenv("HF_TOKEN", hub_token)
    monkeypatch.setenv("TUNEBOARD_SOMETHING_SECRET", "plainsecretvalue")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stderr.log").write_text(
        f"Traceback ...\nHTTPError: 401 for url with token {hub_token}\nsee plainsecretvalue\n"
    )
    job_id = started_job(run_dir=run_dir)
    config = {"name": "leaky", "dataset": {"source": "https://alice:pa55word@data.example.com/train.jsonl"}}
    pasted = client.post("/api/jobs", json=config)
    assert pasted.status_code == 201
    pasted_id = pasted.json()["id"]

    for url in (
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/logs",
        f"/jobs/{job_id}",
        f"/api/jobs/{pasted_id}",
        f"/jobs/{pasted_id}",
        f"/jobs/new?from={pasted_id}",
    ):
        text = client.get(url).text
        for secret in (hub_token, "plainsecretvalue", "pa55word"):
            assert secret not in text, (url, secret)
    detail = client.get(f"/api/jobs/{pasted_id}").json()
    assert detail["config"]["dataset"]["source"] == "https://alice:***@data.example.com/train.jsonl"

    # a worker's log event that quotes the hub token is stored masked
    log_event = {
        "seq": 1,
        "kind": "log",
        "step": 0,
        "payload": {"message": f"download failed with {hub_token}"},
    }
    posted = client.post(
        f"/api/jobs/{job_id}/events",
        json={"events": [log_event]},
        headers={"Authorization": "Bearer test-token"},
    )
    assert posted.status_code == 200
    events = client.get(f"/api/jobs/{job_id}/events").json()
    assert events[0]["payload"]["message"] == "download failed with ***"
    assert hub_token not in client.get(f"/jobs/{job_id}").text
