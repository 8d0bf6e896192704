"""A job's dataset.source may name a local file only inside the directories the operator allows
(TUNEBOARD_DATASET_ROOTS; default: the data dir and the working directory), so a job cannot be used to
probe the server's files; and hostile config bodies are 422s that say what is wrong, never 500s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


def _submit(client: TestClient, source: str) -> Any:
    return client.post("/api/jobs", json={"name": "probe", "dataset": {"source": source}})


def test_a_file_outside_the_dataset_roots_is_refused_without_saying_whether_it_exists(
    client: TestClient, tmp_path: Path
) -> None:
    outside = tmp_path / "secret" / "train.jsonl"
    outside.parent.mkdir()
    outside.write_text(json.dumps({"text": "private"}) + "\n")
    there = _submit(client, str(outside))
    missing = _submit(client, str(tmp_path / "secret" / "nothing-here.jsonl"))
    assert there.status_code == missing.status_code == 422
    message = there.json()["problems"]["dataset.source"]
    assert "TUNEBOARD_DATASET_ROOTS" in message
    assert "does not exist" not in message and "private" not in message
    assert missing.json()["problems"]["dataset.source"] == message.replace(
        "train.jsonl", "nothing-here.jsonl"
    )
    assert client.get("/api/jobs").json() == []


def test_system_files_are_refused_by_default(client: TestClient) -> None:
    for source in ("/etc/passwd", "/etc/../etc/hostname", "~/.ssh/id_rsa.csv"):
        r = _submit(client, source)
        assert r.status_code == 422, source
        assert "TUNEBOARD_DATASET_ROOTS" in r.json()["problems"]["dataset.source"]


def test_files_in_the_data_dir_and_the_working_directory_are_allowed_by_default(
    client: TestClient, settings: Settings
) -> None:
    assert _submit(client, str(settings.data_dir / "corpora" / "train.jsonl")).status_code == 201
    assert _submit(client, "data/train.jsonl").status_code == 201  # relative: the working directory
    assert _submit(client, "upload:0123456789ab").status_code == 201
    assert _submit(client, "preset:reverse-letters").status_code == 201


def test_a_symlink_inside_a_root_that_points_outside_is_refused(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(json.dumps({"text": "x"}) + "\n")
    link = settings.data_dir / "innocent.jsonl"
    link.symlink_to(outside)
    r = _submit(client, str(link))
    assert r.status_code == 422
    assert "TUNEBOARD_DATASET_ROOTS" in r.json()["problems"]["dataset.source"]


def test_the_operator_chooses_the_dataset_roots(tmp_path: Path) -> None:
    corpora = tmp_path / "corpora"
    settings = Settings(data_dir=tmp_path / "data", scheduler_enabled=False, dataset_roots=str(corpora))
    with TestClient(create_app(settings)) as client:
        assert _submit(client, str(corpora / "a" / "train.jsonl")).status_code == 201
        assert _submit(client, str(settings.data_dir / "train.jsonl")).status_code == 422
        assert _submit(client, "train.jsonl").status_code == 422


def test_yaml_submissions_clones_and_sweeps_are_checked_too(client: TestClient) -> None:
    r = client.post(
        "/api/jobs",
        content="name: probe\ndataset:\n  source: /etc/passwd\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert r.status_code == 422
    job_id = _submit(client, "preset:reverse-letters").json()["id"]
    clone = client.post(f"/api/jobs/{job_id}/clone", json={"dataset.source": "/etc/shadow"})
    assert clone.status_code == 422
    sweep = client.post(f"/api/jobs/{job_id}/sweep", json={"dataset.source": ["/etc/passwd", "/etc/group"]})
    assert sweep.status_code == 422
    assert len(client.get("/api/jobs").json()) == 1


@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
def test_deeply_nested_and_huge_number_configs_are_422_naming_the_problem(
    client: TestClient, content_type: str
) -> None:
    nested = '{"name": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = client.post("/api/jobs", content=nested, headers={"Content-Type": content_type})
    assert r.status_code in (413, 422)  # a 100k-deep body may be over the config size cap first
    if r.status_code == 422:
        assert "nested too deeply" in json.dumps(r.json())
    deep = '{"name": "x", "extra": ' + "[" * 20_000 + "]" * 20_000 + "}"
    r = client.post("/api/jobs", content=deep, headers={"Content-Type": content_type})
    assert r.status_code == 422
    assert "nested too deeply" in json.dumps(r.json())
    huge = '{"name": "x", "training": {"max_steps": ' + "9" * 100_000 + "}}"
    r = client.post("/api/jobs", content=huge, headers={"Content-Type": content_type})
    assert r.status_code == 422
    assert "digits" in json.dumps(r.json())


def test_the_new_job_form_shows_the_refusal_next_to_the_field(client: TestClient) -> None:
    from app.jobs.form import FORM_FIELDS, form_values_from_config
    from contract.config import JobConfig, config_to_dict

    values = form_values_from_config(config_to_dict(JobConfig.model_validate({})))
    values["dataset.source"] = "/etc/passwd"
    data = {"mode": "fields", **{f.path: values[f.path] for f in FORM_FIELDS}}
    r = client.post("/jobs/new", data=data)
    assert r.status_code == 422
    assert "text/html" in r.headers["content-type"]
    assert "TUNEBOARD_DATASET_ROOTS" in r.text
    assert client.get("/api/jobs").json() == []
