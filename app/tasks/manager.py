"""Launch and track short worker-side tasks (try-the-adapter, merged export): one at a time per job.

Tasks are processes (`python -m worker.tasks.<name> ...`, argv lists, no shell), started with asyncio in
their own session so a timeout or a vanished client kills the whole group. The registry lives in memory
(no table): a restart forgets running tries (their clients are gone too) and finds a running export again
through RUN_DIR/merge.json and its pid.

What a task loads (model, revision, trust_remote_code, quantization) is the job's config as stored in the
database, validated again and handed over as a task-input file under DATA_DIR/tmp, never anything the
worker wrote: RUN_DIR is worker-writable (and uploadable with the job token), so its
adapter/tuneboard_config.json could otherwise name any local directory's code with trust_remote_code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
from fastapi import Request

from app.scheduler.local import child_env
from app.settings import Settings
from contract.config import config_to_dict, parse_config
from contract.tasks import MERGE_LOG, MERGED_DIR, read_merge_status, write_merge_status

log = logging.getLogger(__name__)

TRY_MODULE = "worker.tasks.generate"
MERGE_MODULE = "worker.tasks.merge"
STALE_GRACE_S = 60.0  # a claim older than its task's timeout plus this is dropped (its cleanup never ran)
MAX_LINE_BYTES = 1024 * 1024
NEVER_STARTED_S = 15.0  # a claim whose process has not started by then is dropped
STARTING_GRACE_S = 30.0  # how long merge.json may say "starting" before the process has written its pid


class TaskBusy(Exception):
    """The job already runs a short task; the message names it."""


def task_config(stored: Any) -> dict[str, Any]:
    """The job's stored config validated by JobConfig: what a task may load (else ConfigError)."""
    return config_to_dict(parse_config(stored))


@dataclass
class TaskClaim:
    """One running task of one job."""

    job_id: int
    kind: str  # "try" | "merge"
    started: float
    timeout_s: float
    pid: int | None = None


_KIND_WORDS = {"try": "a try-the-adapter generation", "merge": "a merged-model export"}


class TaskManager:
    """The short tasks of this app process, at most one per job."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.try_module = TRY_MODULE  # tests point these at stand-ins (tests/fakes)
        self.merge_module = MERGE_MODULE
        self._claims: dict[int, TaskClaim] = {}
        self._supervisors: set[asyncio.Task[None]] = set()  # strong references until they finish

    # ----------------------------------------------------------------------------------- bookkeeping

    def running(self, job_id: int) -> TaskClaim | None:
        """The task this job runs now, if any (stale claims are dropped on the way)."""
        claim = self._claims.get(job_id)
        if claim is None:
            return None
        age = time.monotonic() - claim.started
        # a response whose client left before its body started never runs the generator that would
        # start the process and release the claim: a claim without a process soon counts as stale
        if age > claim.timeout_s + STALE_GRACE_S or (claim.pid is None and age > NEVER_STARTED_S):
            log.warning("job %s: dropping a stale %s claim", job_id, claim.kind)
            self._claims.pop(job_id, None)
            return None
        return claim

    def claim(self, job_id: int, kind: str, timeout_s: float) -> TaskClaim:
        """Reserve the job for one task (no await in here: check and set are atomic on the event loop)."""
        current = self.running(job_id)
        if current is not None:
            raise TaskBusy(
                f"job {job_id} is already running {_KIND_WORDS.get(current.kind, current.kind)}; "
                "wait for it to finish, then try again"
            )
        # each task loads a whole model: a cap keeps a few curious clicks from exhausting memory
        others = [j for j in list(self._claims) if self.running(j) is not None]
        if len(others) >= self.settings.tasks_max_concurrent:
            raise TaskBusy(
                f"{len(others)} short tasks (tries, exports) are running already, the most at once "
                "(TUNEBOARD_TASKS_MAX_CONCURRENT); try again when one has finished"
            )
        claim = TaskClaim(job_id=job_id, kind=kind, started=time.monotonic(), timeout_s=timeout_s)
        self._claims[job_id] = claim
        return claim

    def release(self, claim: TaskClaim) -> None:
        """Free the job for its next task (only if `claim` is still the job's current one)."""
        if self._claims.get(claim.job_id) is claim:
            del self._claims[claim.job_id]

    def command(self, module: str, *args: str) -> list[str]:
        """The argv of a task process."""
        return [self.settings.worker_python or sys.executable, "-m", module, *args]

    def write_task_input(self, config: dict[str, Any], kind: str) -> Path:
        """Write `config` (task_config) to DATA_DIR/tmp, where only the app writes; the caller deletes it."""
        tmp_dir = self.settings.data_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{kind}-config-", suffix=".json", dir=tmp_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        return Path(name)

    def env(self) -> dict[str, str]:
        """The task's environment: the app's minus its secrets, GPUs as configured for tasks."""
        env = child_env(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = self.settings.task_gpus
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ----------------------------------------------------------------------------------- try the adapter

    async def generation_lines(
        self,
        claim: TaskClaim,
        run_dir: Path,
        *,
        config: dict[str, Any],
        prompt: str,
        max_new_tokens: int,
        raw: bool = False,
        idle_every_s: float = 15.0,
    ) -> AsyncGenerator[dict[str, Any] | None, None]:
        """Run the generation task and yield its JSON lines; None every `idle_every_s` of silence.

        The claim is released and the process group killed however this ends: done, error, timeout, or the
        consumer stopping early (a client that disconnected cancels the response and lands in `finally`).
        """
        tmp_dir = self.settings.data_dir / "tmp"
        proc: asyncio.subprocess.Process | None = None
        prompt_file: Path | None = None
        config_file: Path | None = None
        try:
            config_file = self.write_task_input(config, "try")
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="try-", suffix=".txt", dir=tmp_dir)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(prompt)
            prompt_file = Path(name)
            argv = self.command(
                self.try_module,
                str(run_dir),
                "--config",
                str(config_file),
                "--prompt-file",
                str(prompt_file),
                "--max-new-tokens",
                str(max_new_tokens),
            )
            if raw:
                argv.append("--raw")
            with (run_dir / "try.log").open("ab") as stderr_log:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr_log,  # a file: an undrained stderr pipe would block the child
                    env=self.env(),
                    start_new_session=True,
                    limit=MAX_LINE_BYTES,
                )
            claim.pid = proc.pid
            assert proc.stdout is not None
            deadline = time.monotonic() + claim.timeout_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    yield {
                        "error": f"no complete answer within {claim.timeout_s:g} s "
                        "(TUNEBOARD_TRY_TIMEOUT_S); "
                        "ask for fewer new tokens or raise the timeout"
                    }
                    return
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), min(remaining, idle_every_s))
                except TimeoutError:
                    yield None  # still loading or thinking: the caller sends a keep-alive
                    continue
                except ValueError:  # a line beyond the stream limit
                    yield {
                        "error": "the generation process wrote an overlong line; "
                        "see try.log in the run directory"
                    }
                    return
                if not line:
                    code = await proc.wait()
                    yield {
                        "error": f"the generation process ended (exit code {code}) without finishing; "
                        "see try.log in the run directory"
                    }
                    return
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # a library printed to stdout: not ours
                if not isinstance(message, dict):
                    continue
                yield message
                if message.get("done") or "error" in message:
                    return
        finally:
            if proc is not None and proc.returncode is None:
                _kill_group(proc.pid)
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await proc.wait()
            for path in (prompt_file, config_file):
                if path is not None:
                    path.unlink(missing_ok=True)
            self.release(claim)

    # ----------------------------------------------------------------------------------- merged export

    async def start_merge(self, job_id: int, run_dir: Path, *, config: dict[str, Any]) -> dict[str, Any]:
        """Launch the export in the background (TaskBusy if the job runs a task); return its first status."""
        if merge_status(run_dir)["state"] in ("starting", "running"):
            raise TaskBusy(f"job {job_id} is already exporting a merged model; wait for it to finish")
        claim = self.claim(job_id, "merge", self.settings.merge_timeout_s)
        config_file: Path | None = None
        try:
            write_merge_status(
                run_dir,
                state="starting",
                stage="starting",
                progress=0.0,
                message="starting the export process",
            )
            config_file = self.write_task_input(config, "merge")
            argv = self.command(self.merge_module, str(run_dir), "--config", str(config_file))
            with (run_dir / MERGE_LOG).open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env(),
                    start_new_session=True,  # outlives an app restart; merge.json carries its pid
                )
        except BaseException as exc:
            self.release(claim)
            if config_file is not None:
                config_file.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                write_merge_status(
                    run_dir,
                    state="failed",
                    stage="failed",
                    progress=0.0,
                    message=f"could not start the export process: {exc.strerror or exc}; "
                    "check TUNEBOARD_WORKER_PYTHON",
                )
                return merge_status(run_dir)
            raise
        claim.pid = proc.pid
        task = asyncio.create_task(
            self._supervise_merge(claim, proc, run_dir, config_file), name=f"merge-job-{job_id}"
        )
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)
        return merge_status(run_dir)

    async def _supervise_merge(
        self, claim: TaskClaim, proc: asyncio.subprocess.Process, run_dir: Path, config_file: Path
    ) -> None:
        """Wait for the export; kill it at the timeout; make sure merge.json ends in a final state."""
        try:
            try:
                code = await asyncio.wait_for(proc.wait(), claim.timeout_s)
                reason = f"the export process ended with exit code {code} before finishing; see {MERGE_LOG}"
            except TimeoutError:
                _kill_group(proc.pid)
                await proc.wait()
                reason = (
                    f"the export was stopped after {claim.timeout_s:g} s (TUNEBOARD_MERGE_TIMEOUT_S); "
                    "raise the limit for large models"
                )
            status = read_merge_status(run_dir) or {}
            if status.get("state") not in ("succeeded", "failed") or (
                status.get("state") == "succeeded" and proc.returncode != 0
            ):
                write_merge_status(run_dir, state="failed", stage="failed", progress=0.0, message=reason)
        finally:
            config_file.unlink(missing_ok=True)
            self.release(claim)


def merge_status(run_dir: Path | None) -> dict[str, Any]:
    """{"state": none|starting|running|succeeded|failed, "stage", "progress", "message"} of a run's export.

    Read from RUN_DIR/merge.json; an export that claims to run but whose process is gone (app restart,
    SIGKILL) is marked failed here, so the page never shows a spinner forever.
    """
    if run_dir is None:
        return {"state": "none", "stage": "", "progress": 0.0, "message": ""}
    status = read_merge_status(run_dir)
    exported = (run_dir / MERGED_DIR).is_dir()
    if status is None:
        if exported:  # exported by hand or by an older app: still downloadable
            return {"state": "succeeded", "stage": "done", "progress": 1.0, "message": "merged model ready"}
        return {"state": "none", "stage": "", "progress": 0.0, "message": ""}
    state = status.get("state")
    if state in ("starting", "running"):
        # "starting" is written by the app before the process exists (no pid yet): give it time to start
        young = state == "starting" and time.time() - float(status.get("updated_at") or 0) < STARTING_GRACE_S
        if not young and not _is_merge_process(status.get("pid"), run_dir):
            gone: dict[str, Any] = {
                "state": "failed",
                "stage": "failed",
                "progress": 0.0,
                "message": "the export process is gone (the app restarted or it was killed); start it again",
            }
            try:
                status = write_merge_status(run_dir, **gone)
            except OSError:  # a read-only run directory: still say so, just without remembering it
                status = gone
    elif state == "succeeded" and not exported:
        status = {**status, "state": "none", "message": "the merged model was removed; export it again"}
    return {
        "state": status.get("state", "none"),
        "stage": status.get("stage", ""),
        "progress": float(status.get("progress") or 0.0),
        "message": status.get("message", ""),
    }


def _kill_group(pid: int) -> None:
    """SIGKILL a task's process group (its own session, so nothing else is in it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _is_merge_process(pid: Any, run_dir: Path) -> bool:
    """Whether `pid` is alive and is a merge task for `run_dir` (guards against pid reuse)."""
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        argv = proc.cmdline()
        alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return alive and MERGE_MODULE in argv and str(run_dir) in argv


def get_task_manager(request: Request) -> TaskManager:
    """The app's TaskManager, created on first use (app.state.tasks)."""
    manager = getattr(request.app.state, "tasks", None)
    if manager is None:
        manager = TaskManager(request.app.state.settings)
        request.app.state.tasks = manager
    return manager
