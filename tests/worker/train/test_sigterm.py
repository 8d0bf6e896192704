"""SIGTERM, a dashboard cancel or control.json stop training at a step boundary with a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from contract.protocol import ExitCode, read_spool
from contract.rundir import CHECKPOINT_COMPLETE_MARKER, complete_checkpoints
from tests.waiting import wait_until
from tests.worker.training_runs import demo_dict, new_run_dir, start_child

pytestmark = pytest.mark.training

STOP_BOUND_S = 20.0  # from the signal to the process exit, checkpoint included


def _steps_trained(events_path: object) -> int:
    steps = [e["step"] for e in read_spool(events_path) if e["kind"] == "metric"]  # type: ignore[arg-type]
    return max(steps, default=0)


def test_sigterm_saves_a_checkpoint_and_exits_cancelled_within_a_bound() -> None:
    rd = new_run_dir("stop-sigterm", demo_dict(max_steps=500, save_steps=1000, eval_steps=0))
    child = start_child(rd)
    try:
        wait_until(lambda: _steps_trained(rd.events) >= 3, timeout=120, what="three training steps")
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGTERM)
        child.wait(timeout=STOP_BOUND_S + 30)
        took = time.monotonic() - sent
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == ExitCode.CANCELLED
    assert took < STOP_BOUND_S
    outcome = json.loads(rd.outcome.read_text(encoding="utf-8"))
    assert outcome["status"] == "cancelled" and outcome["exit_code"] == ExitCode.CANCELLED
    done = complete_checkpoints(rd)
    assert len(done) == 1 and (done[0] / CHECKPOINT_COMPLETE_MARKER).is_file()
    step = int(done[0].name.split("-")[1])
    assert step >= 3 and step == _steps_trained(rd.events)
    events = read_spool(rd.events)
    assert [e["payload"] for e in events if e["kind"] == "checkpoint"] == [
        {"path": f"checkpoints/checkpoint-{step}", "step": step}
    ]
    assert not rd.adapter.exists()


def test_a_cancel_from_the_dashboard_stops_the_run_and_every_event_reaches_the_app() -> None:
    from tests.worker.fake_app import TOKEN, FakeApp, free_port

    app = FakeApp(free_port())
    app.start()
    rd = new_run_dir("stop-dashboard", demo_dict(max_steps=500, save_steps=1000, eval_steps=0))
    rd.job.write_text(json.dumps({"job_id": 3, "app_url": f"http://127.0.0.1:{app.port}", "token": TOKEN}))
    child = start_child(rd)
    try:
        wait_until(
            lambda: any(e["kind"] == "metric" and e["step"] >= 3 for e in list(app.stored)),
            120,
            "three steps reported to the app",
        )
        app.control = "cancel"
        child.wait(timeout=STOP_BOUND_S + 30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        app.stop()
    assert child.returncode == ExitCode.CANCELLED
    assert json.loads(rd.outcome.read_text(encoding="utf-8"))["reason"].startswith(
        "cancelled from the dashboard"
    )
    spooled = read_spool(rd.events)
    assert app.stored == spooled  # nothing lost, duplicated or reordered on the way
    assert set(app.auth) == {f"Bearer {TOKEN}"}
    assert any(e["kind"] == "checkpoint" for e in app.stored)


def test_control_json_and_the_app_flag_count_as_stop_requests(tmp_path: Path) -> None:
    from worker.train.signals import StopRequest

    flag = threading.Event()
    control = tmp_path / "control.json"
    stop = StopRequest(control, flag)
    assert not stop.is_set()
    control.write_text(json.dumps({"cancel": False}))
    assert not stop.is_set()
    control.write_text(json.dumps({"cancel": True}))
    assert stop.is_set() and "control.json" in stop.reason
    other = StopRequest(None, flag)
    flag.set()
    assert other.is_set() and other.reason == "cancelled from the dashboard"


def test_sigterm_before_training_exits_at_once_with_a_cancelled_outcome(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.worker.training_runs import REPO

    # Model loading can take minutes and has nothing to checkpoint: the handler must not wait for it.
    code = (
        "import os, signal, time; from pathlib import Path; from worker.train.signals import StopRequest; "
        f"s = StopRequest(Path({str(tmp_path / 'control.json')!r})); s.install(); "
        "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30); print('not stopped')"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == ExitCode.CANCELLED and "not stopped" not in out.stdout
    assert time.monotonic() - started < 10
    outcome = json.loads((tmp_path / "outcome.json").read_text(encoding="utf-8"))
    assert outcome == {
        "status": "cancelled",
        "reason": "stopped by SIGTERM before training started; nothing to save",
        "exit_code": ExitCode.CANCELLED,
    }
