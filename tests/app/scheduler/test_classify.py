"""Exit classification: exit code or signal + outcome.json + stderr tail → status and plain-words reason."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from app.jobs.status import JobStatus
from app.scheduler.classify import ProcessStop, StopCause, classify_exit, read_outcome
from app.scheduler.launcher import ExitInfo
from contract.config import config_to_dict, demo_config

S, F, C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED


@pytest.mark.parametrize(
    ("rc", "outcome_reason", "tail", "status", "reason"),
    [
        (0, None, "", S, None),
        (1, None, "Traceback\nRuntimeError: boom", F, "exited with code 1: RuntimeError: boom"),
        (1, "the dataset has no rows", "noise", F, "exited with code 1: the dataset has no rows"),
        (
            2,
            "dataset.source: no such file data.jsonl",
            "",
            F,
            "the config or dataset cannot be used: dataset.source: no such file data.jsonl",
        ),
        (
            3,
            None,
            "",
            C,
            "stopped by a SIGTERM from outside Tuneboard; resume continues from its last checkpoint",
        ),
        (4, "loss became nan at step 12", "", F, "diverged: loss became nan at step 12"),
        (
            6,
            "Gemma3nAudio cannot be quantized",
            "",
            F,
            "quantization incompatibility: Gemma3nAudio cannot be quantized",
        ),
        (7, None, "", F, "exited with code 7"),
        (137, None, "", F, "exited with code 137 (128+9: usually killed by SIGKILL)"),
    ],
)
def test_exit_codes_map_to_statuses_and_reasons(
    rc: int, outcome_reason: str | None, tail: str, status: JobStatus, reason: str | None
) -> None:
    outcome = {"status": "x", "reason": outcome_reason, "exit_code": rc} if outcome_reason else None
    verdict = classify_exit(ExitInfo(returncode=rc), outcome=outcome, stderr_tail=tail)
    assert (verdict.status, verdict.reason, verdict.exit_code) == (status, reason, rc)


def test_out_of_memory_gives_advice_and_offers_gradient_checkpointing_only_when_it_is_off() -> None:
    # the same words the worker writes into outcome.json (contract.advice), with the run's own values
    off = config_to_dict(demo_config())
    off["training"]["gradient_checkpointing"] = False
    verdict = classify_exit(ExitInfo(returncode=5), outcome=None, stderr_tail="", on_gpu=True, config=off)
    assert verdict.reason == (
        "out of GPU memory: lower training.batch_size (now 8) and raise training.grad_accum to keep the "
        "batch; or lower training.max_seq_len (now 128); or turn on training.gradient_checkpointing"
    )
    on = config_to_dict(demo_config())
    verdict = classify_exit(ExitInfo(returncode=5), outcome=None, stderr_tail="", on_gpu=True, config=on)
    assert verdict.reason == (
        "out of GPU memory: lower training.batch_size (now 8) and raise training.grad_accum to keep the "
        "batch; or lower training.max_seq_len (now 128)"
    )


def test_out_of_memory_with_an_unreadable_stored_config_still_names_the_settings_to_change() -> None:
    verdict = classify_exit(
        ExitInfo(returncode=5), outcome=None, stderr_tail="", on_gpu=False, config={"training": []}
    )
    assert verdict.reason == (
        "out of memory (host RAM): lower training.batch_size and raise training.grad_accum to keep the "
        "batch; or lower training.max_seq_len; or turn on training.gradient_checkpointing"
    )


def test_an_unexpected_crash_that_printed_cuda_oom_is_reported_as_out_of_memory() -> None:
    tail = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    verdict = classify_exit(ExitInfo(returncode=1), outcome=None, stderr_tail=tail, on_gpu=True)
    assert (
        verdict.status == F and verdict.reason is not None and verdict.reason.startswith("out of GPU memory")
    )


def test_out_of_memory_on_a_cpu_job_names_host_memory() -> None:
    verdict = classify_exit(ExitInfo(returncode=5), outcome=None, stderr_tail="", on_gpu=False)
    assert verdict.reason is not None and verdict.reason.startswith("out of memory (host RAM)")


def test_a_signal_is_named_and_stored_as_a_negative_exit_code() -> None:
    verdict = classify_exit(ExitInfo.from_returncode(-9), outcome=None, stderr_tail="step 3")
    assert verdict.status == F
    assert verdict.reason is not None and verdict.reason.startswith("killed by signal 9 (SIGKILL)")
    assert verdict.exit_code == -9
    segv = classify_exit(ExitInfo.from_returncode(-11), outcome=None, stderr_tail="")
    assert segv.reason is not None and segv.reason.startswith("killed by signal 11 (SIGSEGV)")


def test_a_requested_cancel_is_cancelled_whether_it_exited_cleanly_or_was_killed() -> None:
    clean = classify_exit(ExitInfo(returncode=3), outcome=None, stderr_tail="", cancel_requested=True)
    assert (clean.status, clean.reason) == (C, "cancelled on request")
    stop = ProcessStop(StopCause.CANCEL, "cancel requested", terminated_at=0.0, killed=True)
    killed = classify_exit(ExitInfo(signal=signal.SIGKILL), outcome=None, stderr_tail="", stop=stop)
    assert killed.status == C
    assert (
        killed.reason
        == "cancelled on request; it did not stop after SIGTERM within the grace period and was killed"
    )


def test_a_job_that_finishes_while_being_cancelled_counts_as_succeeded() -> None:
    verdict = classify_exit(ExitInfo(returncode=0), outcome=None, stderr_tail="", cancel_requested=True)
    assert verdict.status == S


def test_a_crash_while_cancelling_is_still_a_failure() -> None:
    verdict = classify_exit(
        ExitInfo(returncode=1), outcome=None, stderr_tail="KeyError: x", cancel_requested=True
    )
    assert (verdict.status, verdict.reason) == (F, "exited with code 1: KeyError: x")


def test_a_deadline_stop_fails_the_job_and_says_a_checkpoint_was_saved() -> None:
    stop = ProcessStop(StopCause.DEADLINE, "its deadline of 30 minutes (resources.max_runtime_minutes)", 0.0)
    verdict = classify_exit(ExitInfo(returncode=3), outcome=None, stderr_tail="", stop=stop)
    assert verdict.status == F
    assert verdict.reason == (
        "exceeded its deadline of 30 minutes (resources.max_runtime_minutes) and was stopped "
        "(a checkpoint was saved: resume continues from it)"
    )


def test_a_hung_process_fails_with_the_quiet_time() -> None:
    stop = ProcessStop(StopCause.HUNG, "no heartbeat for 130 s", 0.0, killed=True)
    verdict = classify_exit(ExitInfo(signal=9), outcome=None, stderr_tail="", stop=stop)
    assert (verdict.status, verdict.reason) == (
        F,
        "no heartbeat for 130 s; it was stopped as hung; it ignored SIGTERM and was killed",
    )


def test_an_unknown_exit_status_falls_back_to_outcome_json() -> None:
    outcome = {"status": "failed", "reason": "loss became inf", "exit_code": 4}
    verdict = classify_exit(ExitInfo(), outcome=outcome, stderr_tail="")
    assert (verdict.status, verdict.reason, verdict.exit_code) == (F, "diverged: loss became inf", 4)


def test_an_unknown_exit_status_without_outcome_is_a_lost_worker() -> None:
    verdict = classify_exit(ExitInfo(), outcome=None, stderr_tail="")
    assert verdict.status == F and verdict.reason is not None and verdict.reason.startswith("worker lost")


def test_reasons_are_clipped_and_on_one_line() -> None:
    outcome = {"reason": "bad\n" + "x" * 2000}
    verdict = classify_exit(ExitInfo(returncode=2), outcome=outcome, stderr_tail="")
    assert verdict.reason is not None and "\n" not in verdict.reason and len(verdict.reason) < 500


def test_a_torn_outcome_file_reads_as_missing(tmp_path: Path) -> None:
    (tmp_path / "outcome.json").write_text('{"status": "fai')
    assert read_outcome(tmp_path) is None
