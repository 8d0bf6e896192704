"""The app never lets a worker-writable file decide what a task runs.

A worker (or anyone holding its job token) can overwrite RUN_DIR/adapter/tuneboard_config.json through the
artifact upload. The try-the-adapter and merge tasks must take the model, revision, trust flag and
quantization from the job's stored config in the database, handed to them by the app, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.jobs.status import JobStatus
from app.tasks.manager import TaskManager
from contract.config import JobConfig, config_to_dict, parse_config
from tests.app.conftest import set_status
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TOKEN = "worker-token"
ECHO = "tests.security.task_echo"
STORED = {
    "name": "trusted",
    "model": {"name": "preset:tiny-llama", "revision": "main", "trust_remote_code": False},
    "quantization": {"method": "none"},
}


def hostile_config(model_dir: Path) -> dict[str, Any]:
    """What an attacker writes into the adapter: local code, trusted."""
    cfg = config_to_dict(JobConfig.model_validate(STORED))
    cfg["model"] = {**cfg["model"], "name": str(model_dir), "revision": None, "trust_remote_code": True}
    cfg["quantization"] = {**cfg["quantization"], "method": "nf4"}
    return cfg


def evil_model_dir(root: Path) -> tuple[Path, Path]:
    """A model directory whose remote code, if ever imported, leaves a marker file behind."""
    model_dir, marker = root / "evil-model", root / "evil-code-ran"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig"}}), encoding="utf-8"
    )
    (model_dir / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n"
        "    model_type = 'evil'\n",
        encoding="utf-8",
    )
    return model_dir, marker


def succeeded_job_with_uploaded_adapter(
    client: TestClient, factory: sessionmaker[Session], run_dir: Path, hostile: dict[str, Any]
) -> int:
    """A job that ran with STORED, whose worker uploaded an adapter carrying `hostile` as its config."""
    with factory() as session:
        job = service.create_job(session, config=parse_config(STORED), config_text=json.dumps(STORED))
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        job.run_dir = str(run_dir)
        job.attempt = 1
        session.commit()
        job_id = job.id
    auth = {"Authorization": f"Bearer {TOKEN}"}
    uploads = {
        "adapter/adapter_config.json": b"{}",
        "adapter/tuneboard_quantization.json": json.dumps({"method": "nf4", "dtype": "float32"}).encode(),
        "adapter/tuneboard_config.json": json.dumps(hostile).encode(),
    }
    for relative, body in uploads.items():
        answer = client.put(f"/api/jobs/{job_id}/artifacts/{relative}", content=body, headers=auth)
        assert answer.status_code == 201, answer.text
    set_status(factory, job_id, JobStatus.SUCCEEDED)
    return job_id


def echoing_manager(app: FastAPI) -> TaskManager:
    manager = TaskManager(app.state.settings)
    manager.try_module = manager.merge_module = ECHO
    app.state.tasks = manager
    return manager


def sse_tokens(text: str) -> list[str]:
    tokens = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == "token":
            tokens.append(json.loads(lines["data"])["token"])
        assert lines.get("event") != "error", block
    return tokens


def test_trying_the_adapter_hands_the_task_the_stored_config_not_the_uploaded_one(
    app: FastAPI, client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job_id = succeeded_job_with_uploaded_adapter(
        client, session_factory, run_dir, hostile_config(tmp_path / "anything")
    )
    echoing_manager(app)
    answer = client.get(f"/api/jobs/{job_id}/try", params={"prompt": "hello", "max_new_tokens": 4})
    assert answer.status_code == 200, answer.text
    seen = json.loads("".join(sse_tokens(answer.text)))
    assert seen["config"] is not None, f"the task was given no config of the app's: {seen['argv']}"
    model = seen["config"]["model"]
    assert (model["name"], model["revision"], model["trust_remote_code"]) == (
        "preset:tiny-llama",
        "main",
        False,
    )
    assert seen["config"]["quantization"]["method"] == "none"
    # the task input lives where the worker cannot write, and is gone once the task has ended
    config_path = Path(seen["config_path"])
    assert not config_path.resolve().is_relative_to(run_dir.resolve())
    assert not config_path.exists()


def test_the_merged_export_hands_the_task_the_stored_config_not_the_uploaded_one(
    app: FastAPI, client: TestClient, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job_id = succeeded_job_with_uploaded_adapter(
        client, session_factory, run_dir, hostile_config(tmp_path / "anything")
    )
    echoing_manager(app)
    assert client.post(f"/api/jobs/{job_id}/export-merged").status_code == 202
    status = wait_until(
        lambda: client.get(f"/api/jobs/{job_id}/export-merged").json(),
        30,
        "the echo task to end (it reports as failed)",
        interval=0.1,
        until=lambda export: export["state"] == "failed",
    )
    seen = json.loads(status["message"])
    assert seen["config"] is not None, f"the task was given no config of the app's: {seen['argv']}"
    model = seen["config"]["model"]
    assert (model["name"], model["trust_remote_code"]) == ("preset:tiny-llama", False)
    assert not Path(seen["config_path"]).resolve().is_relative_to(run_dir.resolve())


def test_the_task_reads_model_and_quantization_from_its_input_not_from_the_adapter(tmp_path: Path) -> None:
    from worker.tasks.inference import adapter_info

    run_dir = tmp_path / "run"
    adapter = run_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "tuneboard_quantization.json").write_text(json.dumps({"method": "nf4", "dtype": "os.system"}))
    (adapter / "tuneboard_config.json").write_text(json.dumps(hostile_config(tmp_path / "evil")))
    task_input = tmp_path / "task-input.json"
    task_input.write_text(json.dumps(config_to_dict(parse_config(STORED))))
    info = adapter_info(run_dir, task_input)
    assert info.cfg.model.name == "preset:tiny-llama" and not info.cfg.model.trust_remote_code
    assert info.method == "none"  # the stored quantization, not the adapter's claim
    assert info.dtype == "float32"  # a dtype name that is not one is ignored


def test_the_generate_task_never_imports_code_named_by_the_adapters_config(tmp_path: Path) -> None:
    evil_dir, marker = evil_model_dir(tmp_path)
    run_dir = tmp_path / "run"
    adapter = run_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "tuneboard_quantization.json").write_text(json.dumps({"method": "none", "dtype": "float32"}))
    (adapter / "tuneboard_config.json").write_text(json.dumps(hostile_config(evil_dir)))
    stored_model = tmp_path / "stored-model"  # the job's own model: a directory that holds no model
    stored_model.mkdir()
    task_input = tmp_path / "task-input.json"
    stored = {**STORED, "model": {"name": str(stored_model)}}
    task_input.write_text(json.dumps(config_to_dict(parse_config(stored))))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello", encoding="utf-8")
    argv = [sys.executable, "-m", "worker.tasks.generate", str(run_dir), "--config", str(task_input)]
    result = subprocess.run(
        [*argv, "--prompt-file", str(prompt)],
        cwd=REPO,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not marker.exists(), "the adapter's config made the task import a directory's code"
    last = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    assert str(stored_model) in last.get("error", ""), (result.stdout, result.stderr[-2000:])
    assert str(evil_dir) not in result.stdout
