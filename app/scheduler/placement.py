"""Which queued job runs next, and on which slots. Pure functions: the claim transaction feeds them rows.

Policy: priority order (priority desc, then submission order) with backfill and an anti-starvation
reservation. The scheduler walks the queue in that order and starts the first job that fits the free
slots; a job that does not fit yet (it needs 2 GPUs and 1 is free) does not block smaller jobs behind
it, so GPUs do not sit idle. But a stream of small jobs could then keep a wide job waiting forever; so
once a blocked GPU job has waited settings.gpu_reserve_after_s, it reserves the GPUs: jobs behind it
get no GPU until it starts (CPU-only jobs still run). A job ahead of it in the order is never held back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.scheduler.gpus import Slots


@dataclass(frozen=True)
class QueuedJob:
    """What placement needs to know about one queued job."""

    id: int
    priority: int
    gpus: int
    waited_s: float = 0.0  # seconds since it was queued


@dataclass(frozen=True)
class Placement:
    """A job and the slots it gets. `gpus` empty means one CPU slot."""

    job_id: int
    gpus: tuple[str, ...]

    @property
    def assigned(self) -> str:
        """The assigned_gpus column value: "0,1", or "" for a CPU slot."""
        return ",".join(self.gpus)


def parse_assigned(value: str | None) -> tuple[str, ...]:
    """The GPUs in an assigned_gpus column value ("" or None → none)."""
    if not value:
        return ()
    return tuple(p.strip() for p in value.split(",") if p.strip())


def queue_order(jobs: Iterable[QueuedJob]) -> list[QueuedJob]:
    """Higher priority first; equal priorities in submission (id) order."""
    return sorted(jobs, key=lambda j: (-j.priority, j.id))


def impossible_reason(gpus_requested: int, slots: Slots) -> str | None:
    """Why a job can never run on this machine, in plain words, or None if it can once slots free up."""
    have = len(slots.gpus)
    if gpus_requested > have:
        plural = "GPU" if gpus_requested == 1 else "GPUs"
        return f"asks for {gpus_requested} {plural}; this machine has {have} — lower resources.gpus" + (
            " (0 runs on the CPU)" if have == 0 else f" to at most {have}"
        )
    if gpus_requested == 0 and slots.cpu_slots == 0:
        return (
            "asks for no GPU, but this machine runs no CPU-only jobs (TUNEBOARD_CPU_SLOTS=0) — "
            "set resources.gpus to 1 or more, or raise TUNEBOARD_CPU_SLOTS"
        )
    return None


def choose_placement(
    queue: Sequence[QueuedJob],
    slots: Slots,
    busy_gpus: Iterable[str],
    busy_cpu_slots: int,
    *,
    reserve_after_s: float = math.inf,
) -> Placement | None:
    """The first job in queue order that fits the free slots, with the lowest free GPU indices; or None.

    A GPU job that does not fit and has waited at least `reserve_after_s` stops later jobs from taking GPUs.
    """
    busy = set(busy_gpus)
    free = [g for g in slots.gpus if g not in busy]
    free_cpu = slots.cpu_slots - busy_cpu_slots
    for job in queue_order(queue):
        if job.gpus == 0:
            if free_cpu > 0:
                return Placement(job.id, ())
        elif job.gpus <= len(free):
            return Placement(job.id, tuple(free[: job.gpus]))
        elif job.waited_s >= reserve_after_s:
            free = []  # reserved for this job: the GPUs it waits for go to nobody behind it
    return None


def choose_task_gpus(
    requested: int, allowed: Sequence[str], busy_gpus: Iterable[str]
) -> tuple[str, ...] | None:
    """The lowest `requested` of the `allowed` GPUs (settings.task_gpus) that nothing holds; None: wait.

    A task shares no GPU with a training job or another task: it waits until one is free.
    """
    if requested == 0:
        return ()
    busy = set(busy_gpus)
    free = [g for g in allowed if g not in busy]
    return tuple(free[:requested]) if len(free) >= requested else None
