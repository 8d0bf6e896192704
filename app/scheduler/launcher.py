"""The launcher interface: how the supervisor starts, watches and stops one training process.

`local` (app/scheduler/local.py) runs a subprocess on this machine; a Ray backend implements the same
methods with the Ray Jobs API (`external_id` holds its job id, signals become stop requests).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.models import Job


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launcher needs to start attempt `attempt` of job `job_id`."""

    job_id: int
    run_dir: Path
    gpus: tuple[str, ...]  # empty: CPU only
    attempt: int
    # a task (merged export, try-the-adapter) runs another module of the worker with its own files;
    # None/empty: the training entry point, logging to RUN_DIR/stderr.log
    module: str | None = None
    args: tuple[str, ...] = ()
    log_path: Path | None = None  # stderr, and stdout unless stdout_path is set
    stdout_path: Path | None = None  # kept apart when the app reads it (try-the-adapter's token lines)
    task_id: int | None = None  # the task's row, when this is a task (names its Ray job)


@dataclass
class WorkerHandle:
    """A launched (or re-attached) training process. `native` is launcher-private (a Popen, a Ray id)."""

    job_id: int
    run_dir: Path
    pid: int | None
    started_at: float  # wall clock (time.time()) when launched or re-attached
    attached: bool = False  # True when found alive at start-up rather than launched by this process
    external_id: str | None = None
    native: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended. Both None: it ended but its exit status is unknowable (it was not our child)."""

    returncode: int | None = None  # the exit code when it exited normally
    signal: int | None = None  # the signal number when a signal killed it

    @classmethod
    def from_returncode(cls, rc: int) -> ExitInfo:
        """Popen's convention: a negative return code -N means killed by signal N."""
        if rc < 0:
            return cls(returncode=None, signal=-rc)
        return cls(returncode=rc, signal=None)

    @property
    def known(self) -> bool:
        """Whether we know the exit code or signal."""
        return self.returncode is not None or self.signal is not None

    def describe(self) -> str:
        """'exit code 1', 'signal 9 (SIGKILL)' or 'an unknown exit status'."""
        if self.signal is not None:
            return f"signal {self.signal} ({signal_name(self.signal)})"
        if self.returncode is not None:
            return f"exit code {self.returncode}"
        return "an unknown exit status"


def signal_name(number: int) -> str:
    """'SIGKILL' for 9; 'signal N' for numbers this platform does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class LaunchError(RuntimeError):
    """The process could not be started; the message says why and what to do."""


class Launcher(Protocol):
    """Start, watch and stop training processes. Every method returns quickly (the supervisor polls)."""

    name: str

    def launch(self, spec: LaunchSpec) -> WorkerHandle:
        """Start `python -m <worker module> RUN_DIR` for the spec; raise LaunchError when it cannot."""
        ...

    def poll(self, handle: WorkerHandle) -> ExitInfo | None:
        """None while the process runs; how it ended once it has."""
        ...

    def terminate(self, handle: WorkerHandle) -> None:
        """Ask the process to stop (SIGTERM to its process group: it saves a checkpoint and exits)."""
        ...

    def kill(self, handle: WorkerHandle) -> None:
        """Stop the process now (SIGKILL to its process group)."""
        ...

    def attach(self, job: Job) -> WorkerHandle | None:
        """A handle for `job`'s process if it still runs (after an app restart), else None."""
        ...

    def stderr_tail(self, handle: WorkerHandle) -> str:
        """The last lines the process wrote to stderr/stdout in this attempt (bounded)."""
        ...
