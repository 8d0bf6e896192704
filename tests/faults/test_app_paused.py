"""Fault: the app itself is frozen (SIGSTOP, a suspended laptop, an event loop blocked by one huge request)
for longer than the heartbeat timeout. Its workers could not reach it meanwhile; once it wakes it must
grant them a fresh timeout rather than kill them as hung, and nothing they said is lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.faults.harness import AppProcess, assert_stored_exactly_once, fake_config

HEARTBEAT_TIMEOUT_S = 2.0
FROZEN_S = 5.0  # well past the heartbeat timeout


def test_a_healthy_worker_survives_the_app_being_stopped_longer_than_the_heartbeat_timeout(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(
        env={
            "TUNEBOARD_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "TUNEBOARD_APP_PAUSE_THRESHOLD_S": "1",
        }
    )
    job_id = app.submit(fake_config("sleep=10"))
    app.wait_job(job_id, lambda j: (j["last_step"] or 0) >= 3, 30, "three steps stored")
    assert app.proc is not None

    app.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(FROZEN_S)  # the fault under test: the app frozen this long, not a wait for anything
    finally:
        app.proc.send_signal(signal.SIGCONT)

    done = app.wait_terminal(job_id, timeout=30)
    assert done["status"] == "succeeded", done["failure_reason"]
    assert app.get("/api/health")["scheduler"]["resumed_at"] is not None  # it knew it had been away
    assert assert_stored_exactly_once(app, job_id) == done["last_step"]
