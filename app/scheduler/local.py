"""The local launcher: one subprocess per job on this machine, in its own session (process group).

The child's stdout and stderr go to RUN_DIR/stderr.log, a file rather than a pipe: a pipe nobody drains
blocks the child once it fills, and a pipe dies with the app, while a file lets the child keep training
through an app restart (the next app re-attaches by pid). We read only a bounded tail of it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psutil

from app.models import Job
from app.scheduler.launcher import ExitInfo, LaunchError, LaunchSpec, WorkerHandle
from app.scheduler.tail import ATTEMPT_MARKER, read_tail
from contract.rundir import RunDir

log = logging.getLogger(__name__)

# written by the launcher right after the process starts: lets reconciliation find a child whose pid
# never reached the database (the app died between launching and recording it)
LAUNCH_RECORD = "launcher.json"


class LocalLauncher:
    """Runs `[python, -m, worker_module, RUN_DIR]` as a new session with CUDA_VISIBLE_DEVICES set."""

    name = "local"

    def __init__(
        self,
        *,
        python: str | None = None,
        worker_module: str = "worker.train",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = python or sys.executable
        self.worker_module = worker_module
        self.extra_env = dict(extra_env or {})  # e.g. TUNEBOARD_DATASETS_DIR for upload:<id> sources

    def command(self, run_dir: Path) -> list[str]:
        """The argv of a training process (no shell anywhere)."""
        return [self.python, "-m", self.worker_module, str(run_dir)]

    def launch(self, spec: LaunchSpec) -> WorkerHandle:
        """Start the training process (or task) for `spec`; raise LaunchError saying why when it cannot."""
        run = RunDir(spec.run_dir)
        env = child_env(os.environ)
        env.update(self.extra_env)
        # empty string hides every GPU (CPU job); unset would expose them all
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
        env["PYTHONUNBUFFERED"] = "1"
        is_task = spec.module is not None
        if spec.module is not None:
            argv = [self.python, "-m", spec.module, str(spec.run_dir), *spec.args]
        else:
            argv = self.command(spec.run_dir)
        started = time.time()
        try:
            with ExitStack() as files:
                log_file = files.enter_context((spec.log_path or run.stderr).open("ab"))
                out_file = files.enter_context(spec.stdout_path.open("ab")) if spec.stdout_path else None
                if not is_task:  # a task's log (merge.log, try.log) is the task's own; no attempt marker
                    stamp = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
                    log_file.write(
                        f"{ATTEMPT_MARKER}{spec.attempt} of job {spec.job_id} started {stamp} ====\n".encode()
                    )
                    log_file.flush()
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out_file or log_file,
                    stderr=log_file if out_file else subprocess.STDOUT,
                    env=env,
                    close_fds=True,
                    start_new_session=True,  # own process group: signals reach its dataloader workers too
                )
        except OSError as exc:
            raise LaunchError(
                f"could not start {' '.join(argv[:3])}: {exc.strerror or exc}; "
                "check TUNEBOARD_WORKER_PYTHON and that the run directory is writable"
            ) from exc
        if not is_task:  # launcher.json names the training process; a task's pid is in its row
            try:
                record = {"pid": popen.pid, "attempt": spec.attempt, "started_at": started, "argv": argv}
                (run.root / LAUNCH_RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
            except OSError as exc:
                log.warning("job %s: could not write %s (%s)", spec.job_id, LAUNCH_RECORD, exc)
        log.info(
            "job %s: started %s pid %s on %s",
            spec.job_id,
            spec.module or "training",
            popen.pid,
            ",".join(spec.gpus) or "CPU",
        )
        return WorkerHandle(
            job_id=spec.job_id, run_dir=spec.run_dir, pid=popen.pid, started_at=started, native=popen
        )

    def poll(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while it runs; its exit code or signal once it ended (unknown for re-attached processes)."""
        native = handle.native
        if isinstance(native, subprocess.Popen):
            rc = native.poll()
            if rc is None:
                return None
            self._kill_leftovers(handle)
            return ExitInfo.from_returncode(rc)
        if isinstance(native, psutil.Process) and _alive(native):
            return None
        # no leftover sweep here: init reaped it long ago, so its pid (and group id) may be reused
        return ExitInfo()  # not our child: the kernel told its exit status to someone else

    def terminate(self, handle: WorkerHandle) -> None:
        """SIGTERM the process group: the worker saves a checkpoint and exits with ExitCode.CANCELLED."""
        self._signal(handle, signal.SIGTERM)

    def kill(self, handle: WorkerHandle) -> None:
        """SIGKILL the process group."""
        self._signal(handle, signal.SIGKILL)

    def attach(self, job: Job) -> WorkerHandle | None:
        """A handle for `job`'s process if it is alive and is our worker for its RUN_DIR, else None."""
        if not job.run_dir:
            return None
        run_dir = Path(job.run_dir)
        for pid in _candidate_pids(job, run_dir):
            proc = self._our_worker(pid, run_dir)
            if proc is not None:
                log.info("job %s: re-attached to running pid %s", job.id, pid)
                return WorkerHandle(
                    job_id=job.id,
                    run_dir=run_dir,
                    pid=pid,
                    started_at=time.time(),
                    attached=True,
                    native=proc,
                )
        return None

    def stderr_tail(self, handle: WorkerHandle) -> str:
        """The bounded tail of RUN_DIR/stderr.log for the latest attempt."""
        return read_tail(RunDir(handle.run_dir).stderr)

    def _our_worker(self, pid: int, run_dir: Path) -> psutil.Process | None:
        """The process `pid` if it lives and its argv is `-m <worker module> <run_dir>` (guards pid reuse)."""
        try:
            proc = psutil.Process(pid)
            argv = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if not _alive(proc):
            return None
        if self.worker_module in argv and str(run_dir) in argv:
            return proc
        return None

    def _signal(self, handle: WorkerHandle, sig: signal.Signals) -> None:
        pid = handle.pid
        if pid is None:
            return
        native = handle.native
        if isinstance(native, subprocess.Popen) and native.poll() is not None:
            return  # already reaped: its pid may belong to someone else now
        if isinstance(native, psutil.Process) and not _alive(native):
            return
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:  # not a group leader (not started by us with a new session): signal it alone
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.error("job %s: not allowed to send %s to pid %s (%s)", handle.job_id, sig.name, pid, exc)

    def _kill_leftovers(self, handle: WorkerHandle) -> None:
        """SIGKILL what is left of the process group after its leader exited (e.g. dataloader workers
        still holding GPU memory). Linux keeps a pid unused while a group with that id exists."""
        if handle.pid is None:
            return
        try:
            os.killpg(handle.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def child_env(parent: Mapping[str, str]) -> dict[str, str]:
    """The app's environment minus its own secrets: the child never touches the database, and it may
    run model code from the hub (trust_remote_code), so it gets no database URL or credentials."""
    return {
        key: value
        for key, value in parent.items()
        if not (key.startswith("TUNEBOARD_") and any(word in key for word in _SECRET_WORDS))
    }


_SECRET_WORDS = ("DATABASE", "POSTGRES", "PASSWORD", "SECRET", "TOKEN", "KEY")


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (is_running also compares the start time, so a reused pid reads as dead)."""
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _candidate_pids(job: Job, run_dir: Path) -> list[int]:
    """The pid in the database, then the one in RUN_DIR/launcher.json (if it differs)."""
    pids: list[int] = []
    if job.pid:
        pids.append(job.pid)
    try:
        recorded = json.loads((run_dir / LAUNCH_RECORD).read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, int) and recorded not in pids:
        pids.append(recorded)
    return pids
