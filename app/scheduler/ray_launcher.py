"""The Ray launcher: each attempt of a job is a Ray job (Jobs API), running the same worker entry point.

The supervisor treats it like the local launcher: `launch` submits `python -m worker.train RUN_DIR` with
`entrypoint_num_gpus` (Ray picks the node and sets CUDA_VISIBLE_DEVICES there), `poll` reads the Ray job's
status, `terminate` is Ray's stop_job (SIGTERM to the entrypoint's process tree, then SIGKILL after
RAY_JOB_STOP_WAIT_TIME_S, which we set in the job's runtime env so a checkpoint has time to finish).
The worker reports over the same HTTP ingest as a local one: job.json carries app_url and the job token.

Two storage modes (docs/cluster.md):
  - shared (settings.ray_remote_runs_dir unset): the Ray nodes see DATA_DIR at the same path, so RUN_DIR
    (config.json, job.json, checkpoints, adapter) is simply shared;
  - remote: RUN_DIR does not exist on the node. config.json and job.json travel in the runtime env
    (TUNEBOARD_CONFIG_JSON, TUNEBOARD_JOB_JSON), the worker recreates RUN_DIR under ray_remote_runs_dir,
    and before exiting it uploads its adapter, complete checkpoints and outcome.json to the app
    (PUT /api/jobs/{id}/artifacts/..., app/scheduler/uploads.py), so downloads work from the app.

The Ray job's log is copied into the app's RUN_DIR/stderr.log (after this attempt's marker) every
settings.ray_log_sync_s and at the end, so the log endpoints and failure tails work as for local jobs.

Tasks (merged export, try-the-adapter: LaunchSpec.module set) go through the same launch/poll/stop/attach
in shared storage only (app/scheduler/tasks.py decides): the entrypoint runs `python -m <module> RUN_DIR
<args>` with its stdout and stderr redirected by the entrypoint's shell into the task's own files under
DATA_DIR (the try's output file, merge.log / try.log), as the local launcher does, so the app reads them
while the task runs; no attempt marker and no launcher.json (the task's row records the submission id).
`ray` is imported only when this launcher is built (the optional extra `tuneboard[ray]`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shlex
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.models import Job
from app.scheduler.launcher import ExitInfo, LaunchError, LaunchSpec, WorkerHandle
from app.scheduler.local import LAUNCH_RECORD
from app.scheduler.tail import ATTEMPT_MARKER, read_tail
from app.settings import Settings
from contract.rundir import RunDir

log = logging.getLogger(__name__)

# env vars the worker reads (worker/train/remote.py); keep the names in step
CONFIG_ENV = "TUNEBOARD_CONFIG_JSON"
JOB_ENV = "TUNEBOARD_JOB_JSON"
REMOTE_ENV = "TUNEBOARD_REMOTE"
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"


@dataclass
class RayState:
    """Launcher-private state of one Ray job (WorkerHandle.native)."""

    submission_id: str
    log_start: int  # byte offset in RUN_DIR/stderr.log where this attempt's section begins
    attempt: int
    last_log_sync: float = 0.0
    task_log: Path | None = None  # a task: its own log file, written by the entrypoint itself


def make_client(address: str, auth_token: str | None = None) -> Any:
    """A Ray JobSubmissionClient for `address`, sending `auth_token` as a Bearer header when given."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise LaunchError(
            "TUNEBOARD_LAUNCHER=ray needs Ray in the app's environment: pip install 'tuneboard[ray]'"
        ) from exc
    headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as exc:  # ConnectionError, AuthenticationError, ...: say which address failed
        raise LaunchError(
            f"cannot reach the Ray Jobs API at {address}: {exc}; check TUNEBOARD_RAY_ADDRESS "
            "(the head's dashboard URL, port 8265) and TUNEBOARD_RAY_AUTH_TOKEN"
        ) from exc


class RayLauncher:
    """Runs each job attempt as a Ray job through the Jobs API (settings.ray_address)."""

    name = "ray"

    def __init__(self, settings: Settings, *, client: Any = None) -> None:
        if not settings.ray_address and client is None:
            raise ValueError(
                "TUNEBOARD_LAUNCHER=ray needs TUNEBOARD_RAY_ADDRESS (the Ray head's dashboard URL, "
                "e.g. http://ray-head:8265)"
            )
        self.settings = settings
        self.worker_module = settings.worker_module
        self.python = settings.ray_worker_python
        self.remote_runs_dir = settings.ray_remote_runs_dir
        self._client = client
        # a short tag of this data dir keeps submission ids unique when several apps share one cluster
        self._tag = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:8]

    @property
    def client(self) -> Any:
        """The Jobs API client, connected on first use (so an app starts even while Ray is down)."""
        if self._client is None:
            self._client = make_client(str(self.settings.ray_address), self.settings.ray_auth_token)
        return self._client

    # --- what runs where -------------------------------------------------------------------------

    def worker_run_dir(self, spec_run_dir: Path, job_id: int) -> str:
        """RUN_DIR as the Ray node sees it: the app's path (shared storage) or one under the remote dir."""
        if self.remote_runs_dir:
            # the app's unique directory name, so a node never resumes another job's leftovers either
            return str(Path(self.remote_runs_dir) / spec_run_dir.name)
        return str(spec_run_dir)

    def entrypoint(self, run_dir: str) -> str:
        """`python -m worker.train RUN_DIR`, each word shell-quoted (Ray runs the entrypoint in a shell)."""
        return " ".join(shlex.quote(part) for part in (self.python, "-m", self.worker_module, run_dir))

    def task_entrypoint(self, spec: LaunchSpec) -> str:
        """`python -m <module> RUN_DIR <args>` with stdout/stderr appended to the task's files (shared
        storage: the node writes where the app reads), every word shell-quoted."""
        words = (self.python, "-m", str(spec.module), str(spec.run_dir), *spec.args)
        command = " ".join(shlex.quote(part) for part in words)
        log_path = shlex.quote(str(spec.log_path or RunDir(spec.run_dir).stderr))
        if spec.stdout_path is not None:
            return f"{command} >> {shlex.quote(str(spec.stdout_path))} 2>> {log_path}"
        return f"{command} >> {log_path} 2>&1"

    def runtime_env(self, spec: LaunchSpec) -> dict[str, Any]:
        """env_vars for the job: the stop grace and, in remote mode, config.json and job.json themselves."""
        env = {
            # a task saves nothing when stopped (the local launcher SIGKILLs it): no grace to wait for
            STOP_WAIT_ENV: "1" if spec.module is not None else str(self.settings.ray_stop_wait_s),
            "PYTHONUNBUFFERED": "1",
            # dataset.source upload:<id> resolves here (shared storage; remote nodes need hub ids or paths)
            "TUNEBOARD_DATASETS_DIR": str(self.settings.datasets_dir),
        }
        if self.remote_runs_dir and spec.module is None:
            run = RunDir(spec.run_dir)
            job = json.loads(run.job.read_text(encoding="utf-8"))
            job["upload"] = True  # the worker sends adapter/checkpoints/outcome back to the app
            env[CONFIG_ENV] = run.config.read_text(encoding="utf-8")
            env[JOB_ENV] = json.dumps(job)
            env[REMOTE_ENV] = "1"
        return {"env_vars": env}

    # --- the Launcher protocol -------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> WorkerHandle:
        """Submit the attempt (or task) as a Ray job; raise LaunchError with Ray's reason when it cannot."""
        run = RunDir(spec.run_dir)
        is_task = spec.module is not None
        started = time.time()
        metadata = {"tuneboard_job_id": str(spec.job_id), "attempt": str(spec.attempt)}
        if is_task:
            submission_id = (
                f"tuneboard-{self._tag}-job{spec.job_id}-task{spec.task_id}-{secrets.token_hex(3)}"
            )
            metadata["tuneboard_task_id"] = str(spec.task_id)
            log_start = 0  # the task's log is its own file: nothing to keep apart
            entrypoint = self.task_entrypoint(spec)
        else:
            submission_id = f"tuneboard-{self._tag}-job{spec.job_id}-a{spec.attempt}-{secrets.token_hex(3)}"
            with run.stderr.open("ab") as log_file:
                log_start = log_file.tell()
                stamp = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
                log_file.write(
                    f"{ATTEMPT_MARKER}{spec.attempt} of job {spec.job_id} started {stamp} "
                    f"as Ray job {submission_id} ====\n".encode()
                )
            entrypoint = self.entrypoint(self.worker_run_dir(spec.run_dir, spec.job_id))
        try:
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=self.runtime_env(spec),
                entrypoint_num_gpus=len(spec.gpus),
                entrypoint_num_cpus=1,
                metadata=metadata,
            )
        except LaunchError:
            raise
        except Exception as exc:
            raise LaunchError(
                f"Ray did not accept the job ({type(exc).__name__}: {exc}); check TUNEBOARD_RAY_ADDRESS, "
                "TUNEBOARD_RAY_AUTH_TOKEN and that the cluster has the GPUs the job asks for"
            ) from exc
        native = RayState(submission_id=submission_id, log_start=log_start, attempt=spec.attempt)
        if is_task:
            native.task_log = spec.log_path or run.stderr
            log.info("job %s: submitted %s as Ray job %s", spec.job_id, spec.module, submission_id)
            return WorkerHandle(
                job_id=spec.job_id,
                run_dir=spec.run_dir,
                pid=None,
                started_at=started,
                external_id=submission_id,
                native=native,
            )
        record = {
            "launcher": self.name,
            "submission_id": submission_id,
            "attempt": spec.attempt,
            "started_at": started,
            "log_start": log_start,
            "entrypoint": entrypoint,
        }
        try:
            (run.root / LAUNCH_RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("job %s: could not write %s (%s)", spec.job_id, LAUNCH_RECORD, exc)
        log.info("job %s: submitted Ray job %s (%d GPU)", spec.job_id, submission_id, len(spec.gpus))
        return WorkerHandle(
            job_id=spec.job_id,
            run_dir=spec.run_dir,
            pid=None,
            started_at=started,
            external_id=submission_id,
            native=native,
        )

    def poll(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while the Ray job is pending or running; how it ended once it is terminal."""
        state = _state(handle)
        try:
            info = self.client.get_job_info(state.submission_id)
        except Exception as exc:
            if _is_not_found(exc):
                log.warning("job %s: Ray no longer knows %s", handle.job_id, state.submission_id)
                return ExitInfo()  # outcome.json (if any) decides
            # Ray unreachable for a moment: keep waiting; the heartbeat timeout catches a real loss
            log.warning("job %s: cannot ask Ray about %s: %s", handle.job_id, state.submission_id, exc)
            return None
        status = str(getattr(info.status, "value", info.status))
        if status in ("PENDING", "RUNNING"):
            if (
                state.task_log is None
                and time.monotonic() - state.last_log_sync >= self.settings.ray_log_sync_s
            ):
                self._sync_log(handle)
            return None
        self._sync_log(handle, ray_message=info.message if status == "FAILED" else None)
        code = info.driver_exit_code
        if status == "SUCCEEDED":
            return ExitInfo(returncode=0 if code is None else int(code))
        if status == "STOPPED":
            # stop_job: the worker either finished its graceful stop (outcome.json says how) or was
            # SIGKILLed after RAY_JOB_STOP_WAIT_TIME_S (a task saves nothing: it is simply stopped)
            if state.task_log is None and RunDir(handle.run_dir).outcome.is_file():
                return ExitInfo()
            return ExitInfo(signal=int(signal.SIGKILL))
        if code is not None:
            return ExitInfo.from_returncode(int(code))
        return ExitInfo()  # failed before the entrypoint ran (runtime env setup): the log says why

    def terminate(self, handle: WorkerHandle) -> None:
        """Ray's stop_job: SIGTERM to the entrypoint's process tree, SIGKILL after ray_stop_wait_s."""
        self._stop(handle)

    def kill(self, handle: WorkerHandle) -> None:
        """Ray escalates to SIGKILL on its own after RAY_JOB_STOP_WAIT_TIME_S; repeat the stop request."""
        self._stop(handle)

    def attach(self, job: Job) -> WorkerHandle | None:
        """A handle for `job`'s Ray job if it is still pending or running (after an app restart)."""
        if not job.run_dir:
            return None
        run_dir = Path(job.run_dir)
        try:
            record = json.loads((run_dir / LAUNCH_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("launcher") != self.name:
            return None
        submission_id = str(record.get("submission_id") or "")
        if not submission_id or record.get("attempt") != job.attempt:
            return None
        return self.attach_submission(
            job_id=job.id,
            run_dir=run_dir,
            submission_id=submission_id,
            log_start=int(record.get("log_start") or 0),
            attempt=int(job.attempt or 0),
        )

    def attach_submission(
        self,
        *,
        job_id: int,
        run_dir: Path,
        submission_id: str,
        log_start: int = 0,
        attempt: int = 0,
        task_log: Path | None = None,
    ) -> WorkerHandle | None:
        """A handle for Ray job `submission_id` if it is still pending or running, else None (a training
        attempt's from launcher.json, a task's from its row: then `task_log` is the task's log file)."""
        try:
            raw = self.client.get_job_status(submission_id)
            status = str(getattr(raw, "value", raw))
        except Exception as exc:
            log.warning("job %s: cannot ask Ray about %s: %s", job_id, submission_id, exc)
            return None
        if status not in ("PENDING", "RUNNING"):
            return None
        log.info("job %s: re-attached to Ray job %s", job_id, submission_id)
        return WorkerHandle(
            job_id=job_id,
            run_dir=run_dir,
            pid=None,
            started_at=time.time(),
            attached=True,
            external_id=submission_id,
            native=RayState(
                submission_id=submission_id, log_start=log_start, attempt=attempt, task_log=task_log
            ),
        )

    def stderr_tail(self, handle: WorkerHandle) -> str:
        """The bounded tail of this attempt's Ray job log (copied into RUN_DIR/stderr.log first)."""
        state = _state(handle)
        if state.task_log is not None:  # written by the task itself; Ray's own words come at the end
            return read_tail(state.task_log)
        self._sync_log(handle)
        return read_tail(RunDir(handle.run_dir).stderr)

    # --- helpers ---------------------------------------------------------------------------------

    def _stop(self, handle: WorkerHandle) -> None:
        state = _state(handle)
        try:
            self.client.stop_job(state.submission_id)
        except Exception as exc:
            log.error("job %s: Ray stop_job(%s) failed: %s", handle.job_id, state.submission_id, exc)

    def _sync_log(self, handle: WorkerHandle, ray_message: str | None = None) -> None:
        """Rewrite this attempt's section of RUN_DIR/stderr.log with the Ray job's full log so far.

        A task's process writes its own log; Ray's log of it holds only what the entrypoint's shell or
        Ray itself said (a redirection that failed, a runtime env that did not set up): that is appended
        to the task's log once it ended."""
        state = _state(handle)
        state.last_log_sync = time.monotonic()
        try:
            text = self.client.get_job_logs(state.submission_id)
        except Exception as exc:
            log.warning("job %s: cannot fetch the Ray job log: %s", handle.job_id, exc)
            return
        if ray_message and ray_message.strip() and not text.strip():
            text = f"{ray_message.strip()}\n"  # e.g. runtime env setup failed: the only account there is
        if state.task_log is not None:
            if text.strip():
                try:
                    with state.task_log.open("ab") as fh:
                        banner = f"==== what Ray said about Ray job {state.submission_id} ====\n"
                        fh.write((banner + text).encode("utf-8", errors="replace"))
                except OSError as exc:
                    log.warning("job %s: cannot write %s: %s", handle.job_id, state.task_log, exc)
            return
        path = RunDir(handle.run_dir).stderr
        try:
            with path.open("r+b" if path.exists() else "w+b") as fh:
                fh.seek(state.log_start)
                head = fh.readline()  # keep this attempt's marker line
                if not head.startswith(ATTEMPT_MARKER.encode()):
                    head = f"{ATTEMPT_MARKER}{state.attempt} of job {handle.job_id} (Ray job) ====\n".encode()
                fh.seek(state.log_start)
                fh.write(head + text.encode("utf-8", errors="replace"))
                fh.truncate()
        except OSError as exc:
            log.warning("job %s: cannot write %s: %s", handle.job_id, path, exc)


def _state(handle: WorkerHandle) -> RayState:
    native = handle.native
    if not isinstance(native, RayState):
        raise TypeError(f"job {handle.job_id}: not a Ray handle ({type(native).__name__})")
    return native


def _is_not_found(exc: Exception) -> bool:
    text = str(exc).lower()
    return "does not exist" in text or "not found" in text or "404" in text
