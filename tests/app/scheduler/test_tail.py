"""The stderr tail is bounded and shows only the latest attempt."""

from __future__ import annotations

from pathlib import Path

from app.scheduler.tail import ATTEMPT_MARKER, last_line, read_tail


def test_the_tail_keeps_only_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = read_tail(log, max_lines=5)
    assert tail.splitlines() == [f"line {i}" for i in range(995, 1000)]


def test_the_tail_reads_a_bounded_number_of_bytes_and_drops_the_torn_first_line(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_text("x" * 100_000 + "\nshort line\n")
    tail = read_tail(log, max_bytes=1000)
    assert tail == "short line"


def test_the_tail_starts_after_the_latest_attempt_marker(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_text(f"{ATTEMPT_MARKER}1 ====\nold failure\n{ATTEMPT_MARKER}2 ====\nnew output\n")
    assert read_tail(log) == "new output"


def test_a_missing_log_has_an_empty_tail(tmp_path: Path) -> None:
    assert read_tail(tmp_path / "nope.log") == ""


def test_the_last_line_skips_blank_lines() -> None:
    assert last_line("Traceback...\nRuntimeError: boom\n\n  \n") == "RuntimeError: boom"
