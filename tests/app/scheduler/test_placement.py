"""Placement: priority first, then submission order, backfilling jobs that fit; impossible jobs named."""

from __future__ import annotations

from app.scheduler.gpus import Slots
from app.scheduler.placement import QueuedJob, choose_placement, impossible_reason, parse_assigned

TWO_GPUS = Slots(gpus=("0", "1"), cpu_slots=1)


def test_higher_priority_runs_first() -> None:
    queue = [QueuedJob(1, 0, 1), QueuedJob(2, 5, 1)]
    assert choose_placement(queue, TWO_GPUS, [], 0).job_id == 2


def test_equal_priorities_run_in_submission_order() -> None:
    queue = [QueuedJob(7, 0, 1), QueuedJob(3, 0, 1), QueuedJob(5, 0, 1)]
    assert choose_placement(queue, TWO_GPUS, [], 0).job_id == 3


def test_a_job_that_does_not_fit_yet_does_not_block_smaller_jobs_behind_it() -> None:
    queue = [QueuedJob(1, 9, 2), QueuedJob(2, 0, 1)]
    placement = choose_placement(queue, TWO_GPUS, busy_gpus=["0"], busy_cpu_slots=0)
    assert placement is not None and placement.job_id == 2 and placement.gpus == ("1",)


def test_the_lowest_free_gpu_indices_are_assigned() -> None:
    slots = Slots(gpus=("0", "1", "2", "3"), cpu_slots=0)
    placement = choose_placement([QueuedJob(1, 0, 2)], slots, busy_gpus=["1"], busy_cpu_slots=0)
    assert placement is not None and placement.gpus == ("0", "2") and placement.assigned == "0,2"


def test_a_cpu_job_takes_a_cpu_slot_and_waits_when_they_are_all_busy() -> None:
    assert choose_placement([QueuedJob(1, 0, 0)], TWO_GPUS, [], 0).assigned == ""
    assert choose_placement([QueuedJob(1, 0, 0)], TWO_GPUS, [], 1) is None


def test_nothing_is_placed_when_every_gpu_is_busy() -> None:
    assert choose_placement([QueuedJob(1, 0, 1)], TWO_GPUS, ["0", "1"], 0) is None


def test_asking_for_more_gpus_than_the_machine_has_is_impossible_with_advice() -> None:
    assert impossible_reason(2, Slots(gpus=(), cpu_slots=1)) == (
        "asks for 2 GPUs; this machine has 0 — lower resources.gpus (0 runs on the CPU)"
    )
    assert "to at most 2" in (impossible_reason(3, TWO_GPUS) or "")
    assert impossible_reason(2, TWO_GPUS) is None


def test_a_cpu_job_is_impossible_when_cpu_slots_are_off() -> None:
    reason = impossible_reason(0, Slots(gpus=("0",), cpu_slots=0))
    assert reason is not None and "TUNEBOARD_CPU_SLOTS" in reason


def test_assigned_gpus_parse_back_to_indices() -> None:
    assert parse_assigned("0,1") == ("0", "1")
    assert parse_assigned("") == ()
    assert parse_assigned(None) == ()


def test_a_wide_job_that_waited_long_enough_reserves_the_gpus_against_backfill() -> None:
    queue = [QueuedJob(1, 0, 2, waited_s=700), QueuedJob(2, 0, 1, waited_s=5)]
    assert choose_placement(queue, TWO_GPUS, ["0"], 0, reserve_after_s=600) is None
    # before the reservation age, the small job backfills
    young = [QueuedJob(1, 0, 2, waited_s=10), QueuedJob(2, 0, 1, waited_s=5)]
    assert choose_placement(young, TWO_GPUS, ["0"], 0, reserve_after_s=600).job_id == 2


def test_a_reservation_does_not_hold_back_cpu_jobs_or_jobs_ahead_of_it() -> None:
    queue = [QueuedJob(1, 0, 2, waited_s=700), QueuedJob(2, 0, 0)]
    assert choose_placement(queue, TWO_GPUS, ["0"], 0, reserve_after_s=0).job_id == 2
    ahead = [QueuedJob(1, 0, 2, waited_s=700), QueuedJob(2, 9, 1)]
    assert choose_placement(ahead, TWO_GPUS, ["0"], 0, reserve_after_s=0).job_id == 2
