"""`tuneboard export JOB ...` against a live server: queues the export task, follows it, says how it ended;
downloads are checked against the size and sha256 the server lists."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.app.conftest import LiveServer
from tests.app.tasks.test_exports_api import finished_job, published
from tuneboard.export_cmd import ExportCliError, download

REPO = Path(__file__).resolve().parents[3]


def test_the_cli_queues_an_export_follows_it_and_exits_non_zero_with_the_workers_reason(
    live_server: LiveServer, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id, _ = finished_job(session_factory, tmp_path)  # an adapter folder without its settings
    argv = [sys.executable, "-m", "tuneboard.cli", "export", str(job_id), "--format", "gguf"]
    argv += ["--quant", "q4_k_m", "--server", live_server.url]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"job {job_id}: export gguf-q4_k_m queued" in result.stdout
    assert "export gguf-q4_k_m failed" in result.stderr and "no finished adapter" in result.stderr
    unknown = subprocess.run(
        [*argv[:7], "--quant", "q2_k", "--server", live_server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        unknown.returncode == 1 and "no quantization 'q2_k'" in unknown.stderr and "q4_k_m" in unknown.stderr
    )


def test_a_download_is_kept_only_when_its_size_and_sha256_match_the_listing(
    live_server: LiveServer, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    import httpx

    job_id, run_dir = finished_job(session_factory, tmp_path)
    blob = os.urandom(50_000)
    folder = published(run_dir, "gguf-f16", {"model-f16.gguf": blob})
    listing = httpx.get(f"{live_server.url}/api/jobs/{job_id}/exports/gguf-f16").json()
    (file,) = listing["files"]
    got = download(live_server.url, None, file, tmp_path / "out")
    assert got.read_bytes() == blob and hashlib.sha256(got.read_bytes()).hexdigest() == file["sha256"]
    (folder / "model-f16.gguf").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # changed after listing
    with pytest.raises(ExportCliError, match="sha256"):
        download(live_server.url, None, file, tmp_path / "again")
    assert not (tmp_path / "again" / "model-f16.gguf").exists()


def test_a_finished_export_is_downloaded_and_pushed_privately_without_the_token_ever_showing(
    live_server: LiveServer, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    from tests.worker.tasks.hub_standin import hub_standin

    job_id, run_dir = finished_job(session_factory, tmp_path)
    blob = os.urandom(30_000)
    published(run_dir, "gguf-q8_0", {"model-q8_0.gguf": blob, "Modelfile": b"FROM ./model-q8_0.gguf\n"})
    token = "hf_standintoken0123456789"
    out = tmp_path / "out"
    with hub_standin() as (hub_url, hub):
        env = {**os.environ, "HF_TOKEN": token, "HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0"}
        argv = [sys.executable, "-m", "tuneboard.cli", "export", str(job_id), "--format", "gguf"]
        argv += ["--quant", "q8_0", "--download", str(out), "--push-to", "me/tiny-q8"]
        argv += ["--server", live_server.url]
        result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already succeeded" in result.stdout and "pushed: " in result.stdout
    assert token not in result.stdout + result.stderr
    assert hub.repos["me/tiny-q8"]["visibility"] == "private"  # private by default
    assert hub.files["me/tiny-q8"] == {"model-q8_0.gguf": blob, "Modelfile": b"FROM ./model-q8_0.gguf\n"}
    assert {auth for _, _, auth in hub.requests if auth} == {f"Bearer {token}"}, hub.requests
    assert not any(token in p.read_text(errors="ignore") for p in out.iterdir())
    # a wrong token: the error says so, the token is not echoed
    with hub_standin() as (hub_url, _):
        env = {
            **os.environ,
            "HF_TOKEN": "hf_wrongtoken99999999",
            "HF_ENDPOINT": hub_url,
            "HF_HUB_OFFLINE": "0",
        }
        bad = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "pushing to me/tiny-q8 failed" in bad.stderr
    assert "hf_wrongtoken99999999" not in bad.stdout + bad.stderr
