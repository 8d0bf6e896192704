"""The reporter's sender never dies in silence: a run directory removed mid-stream loses no event, events
that could be neither delivered nor spooled are counted and named, and when the app moves (a standby took
over at another address, announced in RUN_DIR/app_url) the reporter follows it. A real HTTP server in a
thread plays the app."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.protocol import EventKind, read_spool
from contract.rundir import RunDir
from tests.waiting import wait_until
from tests.worker.fake_app import TOKEN, FakeApp, free_port
from worker.train.reporter import Reporter


@pytest.fixture
def app() -> Iterator[FakeApp]:
    fake = FakeApp(free_port())
    yield fake
    fake.stop()


def _job(app: FakeApp) -> dict[str, Any]:
    return {"job_id": 7, "app_url": f"http://127.0.0.1:{app.port}", "token": TOKEN}


def _fast(rd: RunDir, job: dict[str, Any] | None) -> Reporter:
    return Reporter(rd, job, send_interval=0.05, backoff_cap=0.2)


def _write_job_json(rd: RunDir, job: dict[str, Any]) -> None:
    """RUN_DIR/job.json as the app writes it (mode 0600): its owner is whom app_url is trusted from."""
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.job.write_text(json.dumps(job))
    rd.job.chmod(0o600)


def _metric_steps(app: FakeApp) -> list[int]:
    with app.lock:
        return [e["step"] for e in app.stored if e["kind"] == "metric"]


def test_removing_the_run_directory_mid_stream_loses_no_event_and_the_sender_keeps_going(
    tmp_path: Path, app: FakeApp
) -> None:
    app.start()
    rd = RunDir(tmp_path / "job-7")
    rep = _fast(rd, _job(app))
    for step in range(1, 21):
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
    wait_until(lambda: rep.acked_seq, 10, "the first 20 events acknowledged", until=lambda seq: seq >= 20)

    shutil.rmtree(rd.root)  # a cleanup script, or a person, removes the run directory mid-training
    for step in range(21, 41):
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
        time.sleep(0.01)  # paced like training steps, so the sender runs between emits and meets the removal

    wait_until(lambda: _metric_steps(app)[-1:], 10, "step 40 delivered", until=lambda last: last == [40])
    assert rep.close(timeout=5)
    assert _metric_steps(app) == list(range(1, 41))
    assert rep.delivery_problem() is None
    warnings = [e["payload"]["message"] for e in app.stored if e["kind"] == "log"]
    assert any("run directory was removed" in m for m in warnings), warnings
    # the spool is back on disk, so a kill from now on would still lose nothing
    assert read_spool(rd.events), "the spool was not re-created"


def test_events_neither_delivered_nor_spooled_are_counted_in_a_reason_that_says_what_was_lost(
    tmp_path: Path,
) -> None:
    rd = RunDir(tmp_path / "job-7")
    nobody = {"job_id": 7, "app_url": f"http://127.0.0.1:{free_port()}", "token": TOKEN}  # the app is away
    rep = _fast(rd, nobody)
    for step in range(1, 6):
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
    shutil.rmtree(rd.root)
    rd.root.write_text("not a directory")  # so the reporter cannot put its spool back either
    rep.emit(EventKind.METRIC, 6, {"loss": 1.0})

    assert not rep.close(timeout=1)
    problem = rep.delivery_problem()
    assert problem is not None
    found = re.fullmatch(r"run directory removed while training: (\d+) events not delivered", problem)
    assert found, problem
    assert int(found.group(1)) >= 6  # the six metrics, plus any heartbeat or warning said meanwhile


def test_the_reporter_follows_the_app_to_the_address_announced_in_the_run_directory(
    tmp_path: Path, app: FakeApp
) -> None:
    app.start()
    rd = RunDir(tmp_path / "job-7")
    _write_job_json(rd, _job(app))
    rep = _fast(rd, _job(app))
    rep.emit(EventKind.METRIC, 1, {"loss": 1.0})
    wait_until(lambda: rep.acked_seq, 10, "the first event acknowledged", until=lambda seq: seq >= 1)

    app.stop()  # the leader dies; a standby on another port takes the job over and says where it is
    standby = FakeApp(free_port())
    standby.start()
    try:
        tmp = rd.root / ".app_url.tmp"
        tmp.write_text(f"http://127.0.0.1:{standby.port}\n")
        os.replace(tmp, rd.app_url)
        for step in range(2, 11):
            rep.emit(EventKind.METRIC, step, {"loss": 1.0})
        assert rep.close(timeout=5)
        assert _metric_steps(standby) == list(range(2, 11))
    finally:
        standby.stop()


def test_an_app_url_file_others_may_write_is_not_followed(tmp_path: Path, app: FakeApp) -> None:
    rd = RunDir(tmp_path / "job-7")
    job = {"job_id": 7, "app_url": f"http://127.0.0.1:{free_port()}", "token": TOKEN}  # the app is away
    _write_job_json(rd, job)
    decoy = FakeApp(free_port())
    decoy.start()
    try:
        rd.app_url.write_text(f"http://127.0.0.1:{decoy.port}\n")
        rd.app_url.chmod(0o666)  # anyone could have put it there: the job token must not go to it
        rep = _fast(rd, job)
        rep.emit(EventKind.METRIC, 1, {"loss": 1.0})
        # a window in which nothing may reach the decoy: several failed posts, each a chance to read app_url
        time.sleep(1.0)
        rep.close(timeout=0.2)
        assert decoy.seqs() == [] and decoy.auth == []
    finally:
        decoy.stop()


def test_a_run_whose_events_did_not_all_reach_the_app_fails_saying_what_was_lost() -> None:
    from contract.protocol import ExitCode
    from worker.train.outcome import Outcome, with_delivery_problem

    problem = "run directory removed while training: 3 events not delivered"
    outcome = with_delivery_problem(Outcome(ExitCode.SUCCEEDED, "trained 40 steps"), problem)
    assert outcome.code == ExitCode.FAILED and outcome.reason.startswith(problem)
    untouched = Outcome(ExitCode.SUCCEEDED, "trained 40 steps")
    assert with_delivery_problem(untouched, None) is untouched


def test_a_worker_whose_job_the_app_has_ended_stops_its_run_instead_of_retrying_forever(
    tmp_path: Path, app: FakeApp
) -> None:
    app.start()
    rd = RunDir(tmp_path / "job-7")
    rep = _fast(rd, _job(app))
    rep.emit(EventKind.METRIC, 1, {"loss": 1.0})
    wait_until(lambda: rep.acked_seq, 10, "the first event acknowledged", until=lambda seq: seq >= 1)
    app.job_ended = True  # e.g. the app failed the job as lost while this worker was cut off
    rep.emit(EventKind.METRIC, 2, {"loss": 1.0})

    wait_until(rep.cancel_requested.is_set, 10, "the run asked to stop")
    refused = len(app.refused)
    time.sleep(0.5)  # a window in which no further post may come: absence is only seen over time
    assert len(app.refused) == refused, "the reporter kept posting to an app that had ended the job"
    rep.close(timeout=1)
    problem = rep.delivery_problem()
    assert problem is not None and "had already ended this job" in problem, problem
    assert [e["step"] for e in read_spool(rd.events)][-1] == 2  # what the app refused stays on disk
