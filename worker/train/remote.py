"""A worker on a node that does not share the app's storage (a Ray node in remote mode). Torch-free.

Before training: RUN_DIR does not exist there, so the launcher passes config.json and job.json in the
environment (TUNEBOARD_CONFIG_JSON, TUNEBOARD_JOB_JSON); `materialize_run_dir` writes them (job.json 0600).
After training: `upload_outputs` PUTs the adapter, the complete checkpoints and, last, outcome.json to
`{app_url}/api/jobs/{id}/artifacts/{relative path}` with the job token, so the app serves downloads and
classifies the exit exactly as for a local run.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from contract.rundir import RunDir, complete_checkpoints
from worker.train.log import say

CONFIG_ENV = "TUNEBOARD_CONFIG_JSON"
JOB_ENV = "TUNEBOARD_JOB_JSON"
REMOTE_ENV = "TUNEBOARD_REMOTE"
UPLOAD_TIMEOUT_S = 300.0
UPLOAD_TRIES = 4


class UploadError(RuntimeError):
    """A file could not be uploaded to the app; the message names it and the app's answer."""


def materialize_run_dir(run_dir: Path, environ: dict[str, str] | None = None) -> bool:
    """Write RUN_DIR/config.json and job.json from the environment when the launcher put them there."""
    env = os.environ if environ is None else environ
    config_text = env.get(CONFIG_ENV)
    job_text = env.get(JOB_ENV)
    if not config_text and not job_text:
        return False
    run = RunDir(Path(run_dir))
    run.root.mkdir(parents=True, exist_ok=True)
    if config_text:
        _write_atomic(run.config, config_text, mode=0o644)
    if job_text:
        _write_atomic(run.job, job_text, mode=0o600)  # it holds the job token
    return True


def upload_requested(run_dir: Path, environ: dict[str, str] | None = None) -> bool:
    """True when this worker runs remotely: TUNEBOARD_REMOTE=1 or job.json says {"upload": true}."""
    env = os.environ if environ is None else environ
    if env.get(REMOTE_ENV) == "1":
        return True
    job = _read_job(RunDir(Path(run_dir)))
    return bool(job and job.get("upload"))


def files_to_upload(run_dir: Path) -> list[str]:
    """Relative paths to send, outcome.json last: adapter/**, complete checkpoints/**, the run plan (a
    resumed attempt reads it), preflight.json of runs started before the plan."""
    run = RunDir(Path(run_dir))
    found: list[str] = []
    roots = [run.adapter, *complete_checkpoints(run)]
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found.append(path.relative_to(run.root).as_posix())
    for name in ("preflight.json", run.plan.name, "outcome.json"):
        if (run.root / name).is_file():
            found.append(name)
    return found


def upload_outputs(run_dir: Path, *, log: Any = None) -> list[str]:
    """Upload what `files_to_upload` lists to the app; returns what was sent. Raises UploadError."""
    run = RunDir(Path(run_dir))
    job = _read_job(run)
    if job is None:
        raise UploadError(f"{run.job} is missing: the app's address and token are unknown, nothing uploaded")
    base = f"{str(job['app_url']).rstrip('/')}/api/jobs/{job['job_id']}/artifacts/"
    token = str(job.get("token", ""))
    sent: list[str] = []
    for relative in files_to_upload(run.root):
        _put_file(base + urllib.parse.quote(relative), run.root / relative, token, relative)
        sent.append(relative)
        if log is not None:
            log(f"uploaded {relative}")
    return sent


def _put_file(url: str, path: Path, token: str, relative: str) -> None:
    """PUT one file (streamed from disk), retrying with backoff while the app is away."""
    delay = 1.0
    last = ""
    for attempt in range(1, UPLOAD_TRIES + 1):
        size = path.stat().st_size
        with path.open("rb") as body:
            request = urllib.request.Request(
                url,
                data=body,
                method="PUT",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_S) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", errors="replace")[:300]
                if 400 <= exc.code < 500:  # the app refused it: retrying will not help
                    raise UploadError(f"the app refused {relative} ({exc.code}): {detail}") from None
                last = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        if attempt < UPLOAD_TRIES:
            time.sleep(delay)
            delay *= 2
    raise UploadError(
        f"could not upload {relative} after {UPLOAD_TRIES} tries ({last}); is the app reachable?"
    )


def _read_job(run: RunDir) -> dict[str, Any] | None:
    try:
        data = json.loads(run.job.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_atomic(path: Path, text: str, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
    finally:
        if fd != -1:
            os.close(fd)
    os.replace(tmp, path)


def report(message: str) -> None:
    """One line on stderr (it ends up in the Ray job log and the app's stderr tail)."""
    say(f"tuneboard remote: {message}")
