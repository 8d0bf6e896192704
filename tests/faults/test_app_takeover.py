"""Fault: two `tuneboard serve` on one data directory; the leader is killed while a job trains. The
standby takes the scheduler over and re-attaches the worker; the worker must find the standby's address
(RUN_DIR/app_url) and go on reporting there, so the job succeeds with every point stored once."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.harness import AppProcess, assert_stored_exactly_once, fake_config
from tests.waiting import wait_until

ENV = {"TUNEBOARD_HEARTBEAT_TIMEOUT_S": "3"}


def test_a_standby_that_takes_over_tells_the_running_worker_its_address_and_nothing_is_lost(
    make_app: Callable[..., AppProcess],
) -> None:
    leader = make_app(env=ENV)
    standby = make_app(env=ENV, data_dir=leader.data_dir)
    assert leader.get("/api/health")["scheduler"]["role"] == "active"
    assert standby.get("/api/health")["scheduler"]["role"] == "standby"
    job_id = leader.submit(fake_config("sleep=10"))
    leader.wait_job(job_id, lambda j: (j["last_step"] or 0) >= 3, 30, "three steps stored")

    leader.kill9()
    wait_until(
        lambda: standby.get("/api/health")["scheduler"]["role"] == "active", 10, "the standby to take over"
    )

    done = standby.wait_terminal(job_id, timeout=30)
    assert done["status"] == "succeeded", done["failure_reason"]
    assert done["attempt"] == 1  # re-attached, never relaunched
    assert assert_stored_exactly_once(standby, job_id) == done["last_step"]
