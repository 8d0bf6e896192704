"""The reporter spools every event, streams it to the app in order, survives the app going away, and
passes the app's cancel control back. Torch-free: a real HTTP server in a thread plays the app."""

from __future__ import annotations

import sys
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


def _fast(rd: RunDir, job: dict[str, Any] | None, **kw: Any) -> Reporter:
    return Reporter(rd, job, send_interval=0.05, backoff_cap=0.2, **kw)


def test_standalone_reporter_spools_events_with_increasing_seq(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rep = Reporter(rd, None)
    assert [rep.emit(EventKind.METRIC, s, {"loss": 1.0 / s}) for s in (1, 2, 3)] == [1, 2, 3]
    rep.close()
    events = read_spool(rd.events)
    assert [(e["seq"], e["kind"], e["step"]) for e in events] == [
        (1, "metric", 1),
        (2, "metric", 2),
        (3, "metric", 3),
    ]


def test_a_resumed_run_continues_seq_after_the_existing_spool(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    first = Reporter(rd, None)
    first.emit(EventKind.LOG, 0, {"level": "info", "message": "one"})
    first.emit(EventKind.LOG, 0, {"level": "info", "message": "two"})
    first.close()
    with rd.events.open("a") as fh:
        fh.write('{"seq": 3, "kind": "met')  # a torn line from a kill -9 mid-write
    second = Reporter(rd, None)
    assert second.emit(EventKind.LOG, 0, {"level": "info", "message": "three"}) == 3
    second.close()
    assert [e["seq"] for e in read_spool(rd.events)] == [1, 2, 3]


def test_events_reach_the_app_in_order_with_the_bearer_token(tmp_path: Path, app: FakeApp) -> None:
    app.start()
    rep = _fast(RunDir(tmp_path), _job(app))
    for step in range(1, 51):
        rep.emit(EventKind.METRIC, step, {"loss": 2.0})
    assert rep.close(timeout=10)
    assert app.seqs() == list(range(1, 51))
    assert set(app.auth) == {f"Bearer {TOKEN}"}
    assert len(app.requests) < 50  # batched, not one request per event


def test_nothing_is_lost_duplicated_or_reordered_while_the_app_is_down(tmp_path: Path, app: FakeApp) -> None:
    rep = _fast(RunDir(tmp_path), _job(app))
    started = time.perf_counter()
    for step in range(1, 31):
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
    # The app is down: emitting still takes no network time.
    assert time.perf_counter() - started < 0.5
    time.sleep(0.8)  # the app stays down this long (the behaviour under test): several failed attempts
    assert rep.acked_seq == 0 and rep.last_error is not None
    app.start()
    for step in range(31, 41):
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
    wait_until(app.seqs, 10, "seq 40 stored", until=lambda seqs: seqs[-1:] == [40])
    app.stop()  # down again mid-run
    for step in range(41, 61):
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
    time.sleep(0.5)  # down for a while again, with events waiting: the outage is the behaviour under test
    app.start()
    assert rep.close(timeout=10)
    assert app.seqs() == list(range(1, 61))
    sent = [seq for request in app.requests for seq in request]
    assert all(a < b for a, b in zip(sent, sent[1:], strict=False))  # no seq sent twice, none out of order


def test_a_relaunched_worker_resends_only_what_the_app_did_not_acknowledge(
    tmp_path: Path, app: FakeApp
) -> None:
    app.start()
    rd = RunDir(tmp_path)
    first = _fast(rd, _job(app))
    for step in range(1, 6):
        first.emit(EventKind.METRIC, step, {"loss": 1.0})
    assert first.close(timeout=10)
    app.stop()
    offline = Reporter(rd, None)  # events spooled while nobody could send them (as if killed before sending)
    offline.emit(EventKind.METRIC, 6, {"loss": 1.0})
    offline.emit(EventKind.METRIC, 7, {"loss": 1.0})
    offline.close()
    app.start()
    app.requests.clear()
    second = _fast(rd, _job(app))
    assert second.close(timeout=10)
    assert app.seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert [s for r in app.requests for s in r] == [6, 7]


def test_oversized_batches_shrink_and_a_rejected_event_does_not_block_the_rest(
    tmp_path: Path, app: FakeApp
) -> None:
    app.max_batch = 8
    app.poison_seq = 13
    rd = RunDir(tmp_path)
    rep = _fast(rd, None)
    for step in range(1, 41):  # spooled before the sender starts: the first batch holds all 40
        rep.emit(EventKind.METRIC, step, {"loss": 1.0})
    rep.close()
    app.start()
    sender = _fast(rd, _job(app))
    assert sender.close(timeout=10)
    assert app.seqs() == [s for s in range(1, 41) if s != 13]
    assert 413 in app.refused and 422 in app.refused
    assert [e["seq"] for e in read_spool(rd.events)] == list(range(1, 41))  # the spool keeps everything


def test_a_cancel_control_in_the_response_sets_the_cancel_flag(tmp_path: Path, app: FakeApp) -> None:
    app.control = "cancel"
    app.start()
    rep = _fast(RunDir(tmp_path), _job(app))
    assert not rep.cancel_requested.is_set()
    rep.emit(EventKind.METRIC, 1, {"loss": 1.0})
    wait_until(rep.cancel_requested.is_set, 10, "the app's cancel passed to the run")
    rep.close()


def test_an_idle_reporter_sends_heartbeats(tmp_path: Path, app: FakeApp) -> None:
    app.start()
    rep = _fast(RunDir(tmp_path), _job(app), heartbeat_interval=0.2)
    rep.emit(EventKind.METRIC, 3, {"loss": 1.0})
    wait_until(
        lambda: sum(1 for e in app.stored if e["kind"] == "heartbeat"),
        10,
        "two heartbeats",
        until=lambda n: n >= 2,
    )
    rep.close()
    beats = [e for e in app.stored if e["kind"] == "heartbeat"]
    assert all(e["step"] == 3 for e in beats)


def test_the_reporter_module_does_not_import_torch() -> None:
    import subprocess

    code = (
        "import sys, worker.train.reporter, worker.train.guard, worker.train.signals; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
