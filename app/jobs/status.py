"""Job statuses and the one function that allows or refuses a transition."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"  # validated and waiting for a slot
    STARTING = "starting"  # claimed by the scheduler; the launcher is starting the process
    RUNNING = "running"  # the training process reported that it runs
    CANCELLING = "cancelling"  # cancel requested; the process is saving a checkpoint and stopping
    SUCCEEDED = "succeeded"  # finished; the adapter is in the run directory
    FAILED = "failed"  # ended with an error; failure_reason says why in plain words
    CANCELLED = "cancelled"  # stopped on request (a checkpoint was saved when it was running)


# The sets, each defined once. The templates read them as globals (app/templating.py) and the browser
# receives them in every page (status_vocabulary), so no script keeps its own list.

# finished: nothing will change the job any more except a resume
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# a process was started for the job and may still run: it holds its GPUs, reports events, is reconciled
ACTIVE = frozenset({JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING})
# not finished: queued or active
UNFINISHED = frozenset(JobStatus) - TERMINAL
# the Cancel button is offered (a cancelling job is already stopping)
CANCELLABLE = frozenset({JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING})
# the Resume button is offered
RESUMABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
# training is under way, so an ETA means something
PROGRESSING = frozenset({JobStatus.STARTING, JobStatus.RUNNING})

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


def badge_class(status: str) -> str:
    """The CSS classes of a status badge (app.css colours one per status)."""
    return f"badge badge-{status}"


def status_vocabulary() -> dict[str, Any]:
    """The statuses, their sets and badge classes as JSON-able data, for the page's scripts."""
    ordered = [s.value for s in JobStatus]

    def names(group: frozenset[JobStatus]) -> list[str]:
        return [s for s in ordered if s in group]

    return {
        "all": ordered,
        "terminal": names(TERMINAL),
        "active": names(ACTIVE),
        "unfinished": names(UNFINISHED),
        "cancellable": names(CANCELLABLE),
        "resumable": names(RESUMABLE),
        "progressing": names(PROGRESSING),
        "badge_class": {s: badge_class(s) for s in ordered},
        # what leads a job page's tab title once the run ended (static/js/job_watch.js)
        "title_mark": {JobStatus.SUCCEEDED.value: "✓", JobStatus.FAILED.value: "✗"},
    }
