"""Job statuses and the one function that allows or refuses a transition."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # validated and waiting for a slot
    STARTING = "starting"  # claimed by the scheduler; the launcher is starting the process
    RUNNING = "running"  # the training process reported that it runs
    CANCELLING = "cancelling"  # cancel requested; the process is saving a checkpoint and stopping
    SUCCEEDED = "succeeded"  # finished; the adapter is in the run directory
    FAILED = "failed"  # ended with an error; failure_reason says why in plain words
    CANCELLED = "cancelled"  # stopped on request (a checkpoint was saved when it was running)


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # queued → failed: the scheduler refuses a job that can never fit this machine (e.g. asks for more GPUs)
    JobStatus.QUEUED: frozenset({JobStatus.STARTING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.STARTING: frozenset(
        {JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.CANCELLING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    # resume puts a stopped job back in the queue; it restarts from its last complete checkpoint
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}


class TransitionError(ValueError):
    """A status change that the lifecycle does not allow."""


def check_transition(current: JobStatus | str, new: JobStatus | str) -> JobStatus:
    """Return `new` as a JobStatus if current → new is allowed, else raise TransitionError."""
    cur, nxt = JobStatus(current), JobStatus(new)
    if nxt not in ALLOWED_TRANSITIONS[cur]:
        raise TransitionError(f"a {cur.value} job cannot become {nxt.value}")
    return nxt


def status_check_sql(column: str = "status") -> str:
    """SQL for the CHECK constraint that keeps unknown statuses out of the table."""
    values = ", ".join(f"'{s.value}'" for s in JobStatus)
    return f"{column} IN ({values})"
