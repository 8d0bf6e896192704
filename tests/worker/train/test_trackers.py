"""`report_to`: real W&B (offline), MLflow (SQLite and file stores), TensorBoard and Trackio (local) get the
run's metrics; a tracker that fails is dropped with one warning and the run still succeeds.

Every tracker here is the real package in its local mode, read back with its own reader: W&B's run file
through W&B's protobuf records, MLflow through MlflowClient, TensorBoard through its EventAccumulator,
Trackio through its SQLite storage API (in a subprocess: trackio fixes its directory when imported).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from contract.config import parse_config
from contract.protocol import EventKind, ExitCode, read_spool
from contract.rundir import RunDir
from tests.worker.training_runs import REPO, FinishedRun, demo_dict, new_run_dir, run_child
from worker.train.reporter import Reporter
from worker.train.trackers import start_trackers
from worker.train.trackers.backends import BACKENDS, Backend, RunContext
from worker.train.trackers.forwarder import Forwarder

ALL = ["wandb", "mlflow", "tensorboard", "trackio"]
STEPS = 6


# ------------------------------------------------------------------------------------------ readers


def wandb_history(wandb_dir: Path) -> tuple[list[dict[str, Any]], int | None]:
    """(history rows, exit code) of the one offline run under `wandb_dir`, from its .wandb record log."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    rows: list[dict[str, Any]] = []
    exit_code = None
    while pos + 7 <= len(data):  # LevelDB log framing: 32 KiB blocks of (crc, length, type) records
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        which = record.WhichOneof("record_type")
        if which == "history":
            items = record.history.item  # W&B 0.31 files the key under nested_key
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
        elif which == "exit":
            exit_code = record.exit.exit_code
    return rows, exit_code


def mlflow_runs(uri: str, project: str = "tuneboard") -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(project)
    assert experiment is not None, f"no MLflow experiment {project} in {uri}"
    return list(client.search_runs([experiment.experiment_id]))


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def tensorboard_scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def trackio_logs(trackio_dir: Path, run: str, project: str = "tuneboard") -> list[dict[str, Any]]:
    code = (
        "import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage\n"
        "print(json.dumps(SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])))"
    )
    env = {**os.environ, "TRACKIO_DIR": str(trackio_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code, project, run], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def dashboard(run: FinishedRun | RunDir, key: str) -> list[tuple[int, float]]:
    rd = run.run_dir if isinstance(run, FinishedRun) else run
    events = read_spool(rd.events)
    return [
        (e["step"], float(e["payload"][key])) for e in events if e["kind"] == "metric" and key in e["payload"]
    ]


def logs(rd: RunDir, level: str) -> list[str]:
    return [
        e["payload"]["message"]
        for e in read_spool(rd.events)
        if e["kind"] == "log" and e["payload"]["level"] == level
    ]


def close_to(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    return [s for s, _ in got] == [s for s, _ in want] and all(
        v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(got, want, strict=True)
    )


def tiny_config(**top: Any) -> dict[str, Any]:
    cfg = demo_dict(max_steps=STEPS, eval_steps=3, save_steps=100, batch_size=4)
    cfg["model"]["name"] = "preset:tiny-llama"
    cfg["dataset"]["num_rows"] = 32
    cfg["training"]["sample_prompts"] = []
    cfg.update(top)
    return cfg


# ------------------------------------------------------------------------------------------ real runs


@pytest.mark.training
def test_a_real_run_sends_the_dashboards_metrics_to_every_tracker_in_its_local_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rd = new_run_dir("trackers-all", tiny_config(name="trackers e2e", report_to=ALL))
    mlruns = (rd.root.parent / f"{rd.root.name}-mlruns").as_uri()  # MLflow where the environment says
    run = run_child(rd, timeout=240, MLFLOW_TRACKING_URI=mlruns, MLFLOW_ALLOW_FILE_STORE="true")
    assert run.returncode == ExitCode.SUCCEEDED, run.stderr[-3000:]
    assert not [m for m in logs(rd, "warning") if "report_to" in m], logs(rd, "warning")
    said = " | ".join(logs(rd, "info"))
    assert all(f"report_to: {name}:" in said for name in ALL), said
    losses, evals = dashboard(run, "loss"), dashboard(run, "eval_loss")
    assert [s for s, _ in losses] == list(range(1, STEPS + 1)) and [s for s, _ in evals] == [3, 6]
    root = rd.root / "trackers"

    rows, exit_code = wandb_history(root / "wandb")
    assert exit_code == 0
    assert close_to([(r["_step"], r["loss"]) for r in rows if "loss" in r], losses)
    assert close_to([(r["_step"], r["eval_loss"]) for r in rows if "eval_loss" in r], evals)
    assert all(
        "grad_norm" in r and "learning_rate" in r and "tokens_per_second" in r for r in rows if "loss" in r
    )

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow keeps its file store for who opts in
    uri = mlruns
    (mlrun,) = mlflow_runs(uri)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "trackers e2e"
    assert close_to(mlflow_history(uri, mlrun.info.run_id, "loss"), losses)
    assert close_to(mlflow_history(uri, mlrun.info.run_id, "eval_loss"), evals)
    assert mlrun.data.params["training.max_steps"] == str(STEPS)
    assert not (root / "mlflow.db").exists()  # the environment's store, not the local default

    assert close_to(tensorboard_scalars(root / "tensorboard", "loss"), losses)
    assert close_to(tensorboard_scalars(root / "tensorboard", "eval_loss"), evals)
    assert close_to(
        tensorboard_scalars(root / "tensorboard", "learning_rate"), dashboard(run, "learning_rate")
    )

    tracked = trackio_logs(root / "trackio", "trackers e2e")
    assert close_to([(r["step"], r["loss"]) for r in tracked if r.get("loss") is not None], losses)
    assert close_to([(r["step"], r["eval_loss"]) for r in tracked if r.get("eval_loss") is not None], evals)


@pytest.mark.training
def test_a_missing_package_and_an_unwritable_directory_leave_the_run_succeeding_with_one_warning_each(
    tmp_path: Path,
) -> None:
    shadow = tmp_path / "shadow" / "wandb"  # this child cannot import wandb, as on a worker without it
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n", encoding="utf-8"
    )
    rd = new_run_dir("trackers-broken", tiny_config(report_to=["wandb", "tensorboard"]))
    (rd.root / "trackers").mkdir()
    (rd.root / "trackers" / "tensorboard").write_text(
        "a file where the event directory goes", encoding="utf-8"
    )
    run = run_child(rd, timeout=240, PYTHONPATH=f"{tmp_path / 'shadow'}{os.pathsep}{REPO}")
    assert run.returncode == ExitCode.SUCCEEDED, run.stderr[-3000:]
    assert run.outcome["status"] == "succeeded"
    warned = [m for m in logs(rd, "warning") if "report_to" in m]
    assert len(warned) == 2, warned
    wandb_warning = next(m for m in warned if m.startswith("report_to: wandb could not start"))
    assert "No module named 'wandb'" in wandb_warning and "pip install 'tuneboard[trackers]'" in wandb_warning
    assert any(m.startswith("report_to: tensorboard could not start") for m in warned), warned
    assert [s for s, _ in dashboard(run, "loss")] == list(range(1, STEPS + 1))  # the dashboard has them all
    full_log = (rd.root / "train.log").read_text(encoding="utf-8")
    assert (
        "report_to: wandb could not start" in full_log
        and "report_to: tensorboard could not start" in full_log
    )


# ------------------------------------------------------------------------------------------ the forwarder


class _Recorder(Backend):
    """A tracker that keeps what it gets in memory (this file's own, registered for one test)."""

    name = "recorder"
    got: list[tuple[int, dict[str, float]]] = []
    fail_at_step: int | None = None
    hang: threading.Event | None = None

    def open(self, ctx: RunContext) -> str:
        return "memory"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.fail_at_step is not None and step >= self.fail_at_step:
            raise OSError(28, "No space left on device")
        type(self).got.append((step, metrics))

    def close(self, failed: bool) -> None:
        if self.hang is not None:
            self.hang.wait(30)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[_Recorder]:
    monkeypatch.setitem(BACKENDS, "recorder", _Recorder)
    _Recorder.got, _Recorder.fail_at_step, _Recorder.hang = [], None, None
    return _Recorder


def _forwarder(rd: RunDir, reporter: Reporter, names: list[str], **kw: Any) -> Forwarder:
    ctx = RunContext(root=rd.root / "trackers", project="tuneboard", run_name="unit", config={})
    return Forwarder(names, ctx, rd, reporter, poll_s=0.05, **kw).start()


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning_while_tensorboard_keeps_going(
    tmp_path: Path, recorder: type[_Recorder]
) -> None:
    rd = RunDir(tmp_path / "run")
    reporter = Reporter(rd, None)
    recorder.fail_at_step = 3
    forwarder = _forwarder(rd, reporter, ["recorder", "tensorboard"])
    for step in range(1, 6):
        reporter.emit(EventKind.METRIC, step, {"loss": 1.0 / step, "note": "not a number"})
    forwarder.close(failed=False)
    reporter.close()
    assert [s for s, _ in recorder.got] == [1, 2] and recorder.got[0][1] == {"loss": 1.0}
    warned = [m for m in logs(rd, "warning") if "report_to" in m]
    assert len(warned) == 1 and "recorder failed to record metrics" in warned[0] and "No space" in warned[0]
    assert close_to(tensorboard_scalars(rd.root / "trackers" / "tensorboard", "loss"), dashboard(rd, "loss"))


def test_closing_waits_a_bounded_time_for_a_hung_tracker(tmp_path: Path, recorder: type[_Recorder]) -> None:
    rd = RunDir(tmp_path / "run")
    reporter = Reporter(rd, None)
    recorder.hang = threading.Event()
    forwarder = _forwarder(rd, reporter, ["recorder"], close_timeout_s=0.5)
    reporter.emit(EventKind.METRIC, 1, {"loss": 2.0})
    forwarder.close(failed=False)  # returns although the tracker's close never does
    recorder.hang.set()
    reporter.close()
    assert recorder.got == [(1, {"loss": 2.0})]
    assert any("still busy" in m for m in logs(rd, "warning")), logs(rd, "warning")


def test_a_relaunched_attempt_forwards_only_what_the_first_did_not(
    tmp_path: Path, recorder: type[_Recorder]
) -> None:
    rd = RunDir(tmp_path / "run")
    first = Reporter(rd, None)
    forwarder = _forwarder(rd, first, ["recorder"])
    first.emit(EventKind.METRIC, 1, {"loss": 3.0})
    forwarder.close(failed=True)
    first.close()
    second = Reporter(rd, None)  # the resumed attempt: same RUN_DIR, same spool
    forwarder = _forwarder(rd, second, ["recorder"])
    second.emit(EventKind.METRIC, 2, {"loss": 2.0})
    forwarder.close(failed=False)
    second.close()
    assert [s for s, _ in recorder.got] == [1, 2]


def test_no_report_to_starts_nothing(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    trackers = start_trackers(parse_config({}), rd, Reporter(rd, None))
    trackers.close(failed=False)
    assert not (rd.root / "trackers").exists()


def test_mlflow_defaults_to_a_sqlite_store_in_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rd = RunDir(tmp_path / "run")
    reporter = Reporter(rd, None)
    cfg = parse_config({"name": "local", "report_to": ["mlflow"], "tracking": {"project": "team-x"}})
    trackers = start_trackers(cfg, rd, reporter)
    for step in (1, 2, 3):
        reporter.emit(EventKind.METRIC, step, {"loss": 1.0 / step, "grad_norm": "nan"})
    trackers.close(failed=True)
    reporter.close()
    assert not [m for m in logs(rd, "warning") if "report_to" in m], logs(rd, "warning")
    uri = f"sqlite:///{rd.root / 'trackers' / 'mlflow.db'}"
    (mlrun,) = mlflow_runs(uri, "team-x")
    assert mlrun.info.run_name == "local" and mlrun.info.status == "FAILED"
    assert mlflow_history(uri, mlrun.info.run_id, "loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert [v != v for _, v in mlflow_history(uri, mlrun.info.run_id, "grad_norm")] == [True] * 3  # NaN kept
