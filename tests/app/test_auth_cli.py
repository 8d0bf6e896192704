"""`tuneboard auth ...` and the CLI's --token, run as real subprocesses against a real server."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from app.auth.store import auth_path, create_token, load_auth
from tests.app.test_cli import REPO, assert_one_line_error
from tests.waiting import wait_until


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBOARD_")}
    return subprocess.run(
        [sys.executable, "-m", "tuneboard.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_auth_commands_set_the_password_and_manage_tokens(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    short = run_cli("auth", "set-password", *data, env={"TUNEBOARD_PASSWORD": "short"})
    assert_one_line_error(short, "too short")
    no_terminal = run_cli("auth", "set-password", *data)
    assert_one_line_error(no_terminal, "TUNEBOARD_PASSWORD")

    ok = run_cli("auth", "set-password", *data, env={"TUNEBOARD_PASSWORD": "long enough secret"})
    assert ok.returncode == 0, ok.stderr
    assert load_auth(tmp_path).verify_password("long enough secret")
    assert "long enough secret" not in ok.stdout + ok.stderr

    created = run_cli("auth", "create-token", "laptop", *data)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("tb_") and len(token) > 40 and "\n" not in token
    assert "shown only this once" in created.stderr
    assert load_auth(tmp_path).token_name(token) == "laptop"
    assert stat.S_IMODE(auth_path(tmp_path).stat().st_mode) == 0o600

    listed = run_cli("auth", "list-tokens", *data)
    assert "laptop" in listed.stdout and token not in listed.stdout

    assert run_cli("auth", "revoke-token", "laptop", *data).returncode == 0
    assert load_auth(tmp_path).token_name(token) is None


def test_serve_on_all_interfaces_without_auth_exits_with_the_way_out(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "binding to 0.0.0.0 needs auth", "tuneboard auth set-password")
    assert not (tmp_path / "tuneboard.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_on_all_interfaces_with_auth_starts_and_the_cli_sends_the_token(tmp_path: Path) -> None:
    token = create_token(tmp_path, "ci")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneboard.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TUNEBOARD_")},
            "TUNEBOARD_SCHEDULER_ENABLED": "false",
            "TUNEBOARD_PASSWORD": "from the environment",  # as docker-compose.yml passes it
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answering() -> bool:
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            return False

        wait_until(answering, 60, "`tuneboard serve` to answer /api/health", interval=0.2)
        assert httpx.get(f"{url}/api/jobs").status_code == 401
        login = httpx.post(f"{url}/login", data={"password": "from the environment", "next": "/"})
        assert login.status_code == 303 and "tuneboard_session" in login.headers["set-cookie"]

        refused = run_cli("ls", "--server", url)
        assert_one_line_error(refused, "401", "tuneboard auth create-token")
        listed = run_cli("ls", "--server", url, "--token", token)
        assert listed.returncode == 0 and "no jobs yet" in listed.stdout, listed.stderr

        config = tmp_path / "job.yaml"
        config.write_text("name: with a token\n")
        env = {"TUNEBOARD_TOKEN": token}
        submitted = run_cli("submit", str(config), "--server", url, env=env)
        assert submitted.returncode == 0 and "job 1 queued" in submitted.stdout, submitted.stderr
        cancelled = run_cli("cancel", "1", "--server", url, env=env)
        assert cancelled.returncode == 0 and "job 1 cancelled" in cancelled.stdout, cancelled.stderr
        # past the auth check: the server itself answers that there is no adapter
        download = run_cli("download", "1", "--server", url, "-o", str(tmp_path / "a.zip"), env=env)
        assert_one_line_error(download, "404", "adapter")
    finally:
        server.terminate()
        server.wait(timeout=30)
