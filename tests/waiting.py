"""The one way tests wait: poll a condition until it holds, or fail saying what was awaited and what was seen.

    job = wait_until(lambda: client.get("/api/jobs/1").json(), 30, "job 1 to finish",
                     until=lambda j: j["status"] in TERMINAL)

A fixed `time.sleep` is right only where the pause itself is the behaviour under test (an app kept away for
a while, a window in which something must *not* happen); everything else waits here for what it needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

_SHOWN_CHARS = 2000  # enough of the last value to see why, short enough to read in a failure report


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    until: Callable[[T], Any] = bool,
) -> T:
    """Call `probe` every `interval` s until `until(value)` is truthy (by default: the value itself) and
    return that value; after `timeout` s fail naming `what` and showing the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value)
        time.sleep(interval)


async def wait_until_async(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    *,
    until: Callable[[T], Any] = bool,
) -> T:
    """`wait_until` for a test running on an event loop: it sleeps with `asyncio.sleep`, so the loop's
    own tasks (a scheduler loop under test) keep running between two probes."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, value)
        await asyncio.sleep(interval)


def _timed_out(timeout: float, what: str, value: Any) -> AssertionError:
    shown = repr(value)
    if len(shown) > _SHOWN_CHARS:
        shown = shown[:_SHOWN_CHARS] + " …"
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}; last seen: {shown}")


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process `pid` stops running within `timeout` s (a zombie counts: it was killed, its reaper
    is slower). A yes or no rather than a failure, so both `assert gone(pid)` and, for a process that
    must survive a moment, `assert not gone(pid, timeout=0.2)` read as they mean."""
    try:
        wait_until(lambda: _process_state(pid), timeout, f"process {pid} to end", until=_ended)
    except AssertionError:
        return False
    return True


def _process_state(pid: int) -> str:
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return "gone"


def _ended(state: str) -> bool:
    return state in ("gone", psutil.STATUS_ZOMBIE)


@dataclass(frozen=True)
class Reading:
    """One reading of a `stopped_changing` probe: true when it equals the reading before it."""

    value: Any
    settled: bool

    def __bool__(self) -> bool:
        return self.settled

    def __repr__(self) -> str:
        return f"{self.value!r} ({'settled' if self.settled else 'still changing'})"


def stopped_changing(read: Callable[[], Any]) -> Callable[[], Reading]:
    """A probe for `wait_until`: true once `read()` gives the same value twice in a row (one `interval`
    apart), e.g. a counter that a background loop stops bumping. Pick `interval` longer than that loop's
    own period, or a pause between two bumps reads as settled."""
    previous: list[Any] = [object()]  # never equal to a first reading

    def probe() -> Reading:
        now = read()
        reading = Reading(now, bool(now == previous[0]))
        previous[0] = now
        return reading

    return probe
