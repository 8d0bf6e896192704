"""Fault 2: kill -9 of the app while a job trains; training goes on and the restarted app re-attaches."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import pytest

from contract.protocol import read_spool
from tests.faults.harness import (
    INJECT_STEP_SLEEP_ENV,
    REAL_WORKER,
    AppProcess,
    assert_stored_exactly_once,
    loss_steps,
    real_config,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.training

STEPS = 80
STEP_SLEEP_S = "0.1"  # ~8 s of training: alive across the app's kill and restart, at little CPU cost
DOWN_S = 2.0


def test_training_survives_an_app_sigkill_and_the_restarted_app_stores_every_point_once(
    make_app: Callable[..., AppProcess],
) -> None:
    app = make_app(worker_module=REAL_WORKER, env={INJECT_STEP_SLEEP_ENV: STEP_SLEEP_S})
    job_id = app.submit(real_config(max_steps=STEPS, save_steps=1000))
    rd = app.run_dir(job_id)
    app.wait_job(
        job_id,
        lambda j: j["status"] == "running" and (j["last_step"] or 0) >= 3,
        timeout=90,
        what="running with three steps stored",
    )
    pid = app.worker_pid(job_id)

    app.kill9()
    spooled_at_kill = max(loss_steps(read_spool(rd.events)))
    time.sleep(DOWN_S)  # the fault under test: the app stays dead this long while the worker trains on
    worker = psutil.Process(pid)
    assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE, "the worker died with the app"
    # it kept training while nobody listened: it never waits on the app
    assert max(loss_steps(read_spool(rd.events))) > spooled_at_kill

    app.start()
    health = app.get("/api/health")
    reattached = [j for j in health["scheduler"]["jobs"] if j["job_id"] == job_id]
    assert reattached and reattached[0]["reattached"] and reattached[0]["pid"] == pid, health["scheduler"]
    assert health["scheduler"]["reconciled_at_start"] == {"reattached": 1}
    assert app.job(job_id)["status"] == "running"  # shown as it is, not failed and not restarted

    done = app.wait_terminal(job_id, timeout=120)
    assert done["status"] == "succeeded", done["failure_reason"]
    assert done["attempt"] == 1 and done["last_step"] == STEPS
    spooled = read_spool(rd.events)
    assert loss_steps(spooled) == list(range(1, STEPS + 1))  # one run, never relaunched
    assert assert_stored_exactly_once(app, job_id) == STEPS  # no gap, no duplicate
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10, "exit")
