"""The `tuneboard` command line, run as a real subprocess (errors are one line, never a traceback)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from app.jobs import service
from app.jobs.status import JobStatus
from app.migrate import current_revision
from app.models import Job
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def tuneboard(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuneboard.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_serve_refuses_a_non_loopback_host_until_auth_exists(tmp_path: Path) -> None:
    result = tuneboard("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "binding to 0.0.0.0 needs auth, which is not configured")
    assert not (tmp_path / "tuneboard.db").exists()


def test_db_upgrade_migrates_a_new_data_dir_to_head(tmp_path: Path) -> None:
    result = tuneboard("db", "upgrade", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'd' / 'tuneboard.db'}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert f"revision {head}" in result.stdout
    assert current_revision(url) == head


def test_train_reports_config_problems_in_one_line_without_importing_torch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: 0\nlora:\n  rank: 4\n")
    probe = (
        "import sys\n"
        "from tuneboard.cli import main\n"
        f"sys.argv = ['tuneboard', 'train', {str(bad)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('exit', code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.stdout.strip() == "exit 1 False", result.stdout + result.stderr
    assert "training.learning_rate" in result.stderr and "lora.rank" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_against_a_missing_server_say_so_plainly() -> None:
    result = tuneboard("ls", "--server", "http://127.0.0.1:9")
    assert_one_line_error(result, "cannot reach Tuneboard at http://127.0.0.1:9")


def _drive_job(
    factory: sessionmaker[Session], url: str, job_id: int, outcome: JobStatus, run_dir: Path
) -> None:
    """Play the scheduler and the worker: start the job, report a few steps, finish it."""

    def submitted() -> bool:
        with factory() as s:
            return s.get(Job, job_id) is not None

    wait_until(submitted, 30, f"the CLI to submit job {job_id}")
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        service.transition(s, job=job, to=JobStatus.STARTING)
        job.token_hash = hashlib.sha256(b"cli-token").hexdigest()
        job.run_dir = str(run_dir)
        s.commit()
    events: list[dict[str, Any]] = [
        {"seq": 1, "kind": "status", "step": 0, "ts": 1.0, "payload": {"status": "running", "total_steps": 3}}
    ]
    events += [
        {"seq": i + 1, "kind": "metric", "step": i, "ts": 1.0, "payload": {"loss": 1.0 / i}}
        for i in (1, 2, 3)
    ]
    r = httpx.post(
        f"{url}/api/jobs/{job_id}/events",
        json={"events": events},
        headers={"Authorization": "Bearer cli-token"},
    )
    assert r.status_code == 200
    time.sleep(0.3)  # the job runs a moment, as a real one does, so the CLI follows it while it is running
    (run_dir / "adapter").mkdir(parents=True, exist_ok=True)
    (run_dir / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.adapter_path = "adapter" if outcome == JobStatus.SUCCEEDED else None
        service.transition(
            s, job=job, to=outcome, reason=None if outcome == JobStatus.SUCCEEDED else "out of memory"
        )
        s.commit()


def test_submit_wait_follows_the_job_to_success_then_ls_and_download(
    live_server, session_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "job.yaml"
    config.write_text("name: cli run\ntraining:\n  max_steps: 3\n")
    driver = threading.Thread(
        target=_drive_job, args=(session_factory, live_server.url, 1, JobStatus.SUCCEEDED, tmp_path / "run")
    )
    driver.start()
    result = tuneboard("submit", str(config), "--server", live_server.url, "--wait")
    driver.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "job 1 queued" in result.stdout and "job 1 succeeded" in result.stdout

    listed = tuneboard("ls", "--server", live_server.url)
    assert listed.returncode == 0
    row = listed.stdout.splitlines()[1].split()
    assert row[:3] == ["1", "succeeded", "3/3"] and "cli" in listed.stdout

    out = tmp_path / "adapter.zip"
    got = tuneboard("download", "1", "-o", str(out), "--server", live_server.url)
    assert got.returncode == 0, got.stderr
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["adapter_config.json"]


def test_submit_wait_exits_non_zero_when_the_job_fails(live_server, session_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "job.json"
    config.write_text('{"name": "doomed"}')
    driver = threading.Thread(
        target=_drive_job, args=(session_factory, live_server.url, 1, JobStatus.FAILED, tmp_path / "run")
    )
    driver.start()
    result = tuneboard("submit", str(config), "--server", live_server.url, "--wait")
    driver.join(timeout=30)
    assert_one_line_error(result, "job 1 failed: out of memory")


def test_submit_of_an_invalid_config_creates_nothing_and_cancel_and_download_explain_refusals(
    live_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_size: 0\n")
    assert_one_line_error(tuneboard("submit", str(bad), "--server", live_server.url), "training.batch_size")
    assert httpx.get(f"{live_server.url}/api/jobs").json() == []

    good = tmp_path / "good.yaml"
    good.write_text("name: later\n")
    assert tuneboard("submit", str(good), "--server", live_server.url).returncode == 0
    cancelled = tuneboard("cancel", "1", "--server", live_server.url)
    assert cancelled.returncode == 0 and "job 1 cancelled" in cancelled.stdout
    assert_one_line_error(tuneboard("cancel", "1", "--server", live_server.url), "409", "already cancelled")
    assert_one_line_error(tuneboard("download", "1", "--server", live_server.url), "404", "not started")
    assert_one_line_error(
        tuneboard("cancel", "77", "--server", live_server.url), "404", "job 77 does not exist"
    )


def test_import_config_converts_an_axolotl_file_and_lists_what_it_could_not_map(tmp_path: Path) -> None:
    source = REPO / "tests" / "contract" / "foreign_configs" / "axolotl-gemma3n-qlora.yaml"
    out = tmp_path / "job.yaml"
    result = tuneboard("import-config", str(source), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "read as an Axolotl config" in result.stderr
    assert "NOT MAPPED  wandb_project:" in result.stderr
    assert f"tuneboard train {out}" in result.stderr
    from contract.config import load_config_file

    config = load_config_file(out)
    assert config.model.name == "google/gemma-3n-E2B-it" and config.quantization.method == "nf4"
    to_stdout = tuneboard("import-config", str(source))
    assert to_stdout.stdout == out.read_text(encoding="utf-8")


def test_import_config_of_a_file_from_no_known_tool_is_one_plain_line(tmp_path: Path) -> None:
    ours = tmp_path / "ours.yaml"
    ours.write_text("model: preset:tiny-llama\n", encoding="utf-8")
    assert_one_line_error(tuneboard("import-config", str(ours)), "not a LLaMA-Factory or Axolotl")
    assert_one_line_error(tuneboard("import-config", str(tmp_path / "missing.yaml")), "cannot read")
