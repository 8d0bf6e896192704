"""The job page's logs (GET /api/jobs/{id}/logs, /train.log, the page): the run's own log, RUN_DIR/train.log
(every message, library warnings, tracebacks), is shown when it exists, secrets masked; the raw process output
(stderr.log) before that. A worker-written link pointing elsewhere is never followed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.app.test_pages import Elements

TOKEN = "hf_" + "a1B2c3D4e5F6g7H8i9J0"


def test_the_runs_own_log_is_shown_and_downloadable(
    client: TestClient, started_job: Any, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stderr.log").write_text("raw process output\n")
    job_id = started_job(run_dir=run_dir, name="logs")
    assert client.get(f"/api/jobs/{job_id}/logs").json() == {
        "log_tail": None,
        "stderr_tail": "raw process output",
    }
    assert client.get(f"/api/jobs/{job_id}/train.log").status_code == 404
    lines = [f"line {i}" for i in range(300)] + [f"UserWarning: from a library, token {TOKEN}"]
    (run_dir / "train.log").write_text("\n".join(lines) + "\n")
    logs = client.get(f"/api/jobs/{job_id}/logs").json()
    assert logs["log_tail"].splitlines()[-1] == "UserWarning: from a library, token hf_***"
    assert len(logs["log_tail"].splitlines()) == 200 and logs["stderr_tail"] == "raw process output"
    full = client.get(f"/api/jobs/{job_id}/train.log")
    assert full.status_code == 200 and "attachment" in full.headers["content-disposition"]
    assert full.text.startswith("line 0\n") and TOKEN not in full.text and "hf_***" in full.text
    page = Elements(client.get(f"/jobs/{job_id}").text)
    assert page.text_by_id["logs"].rstrip().endswith("token hf_***")


def test_a_log_linked_outside_the_run_directory_is_not_served(
    client: TestClient, started_job: Any, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not for the browser\n")
    (run_dir / "train.log").symlink_to(secret)
    job_id = started_job(run_dir=run_dir, name="linked")
    assert "links outside the run directory" in client.get(f"/api/jobs/{job_id}/logs").json()["log_tail"]
    answer = client.get(f"/api/jobs/{job_id}/train.log")
    assert answer.status_code == 404 and "not for the browser" not in answer.text
