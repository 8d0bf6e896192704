"""The real app as a uvicorn subprocess (so a test can kill -9 it), plus helpers the fault tests share.

The app runs with the scheduler on, a 0.1 s tick and CPU slots only; its training children are real
`python -m worker.train` processes (or the fake trainer, for faults that are about the app). Nothing
here talks to the app's internals: HTTP for what a user sees, the SQLite file (read-only) for what is
stored, RUN_DIR files for what the worker produced.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from contract.config import config_to_dict, demo_config
from contract.protocol import read_spool
from contract.rundir import RunDir
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
FAKE_TRAINER = "tests.fakes.fake_trainer"
REAL_WORKER = "worker.train"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# the worker's test hooks (worker/train/faults.py), named here so tests stay torch-free
INJECT_STEP_SLEEP_ENV = "TUNEBOARD_INJECT_STEP_SLEEP_S"
INJECT_OOM_ENV = "TUNEBOARD_INJECT_OOM_AT_STEP"
INJECT_KILL_BEFORE_MARKER_ENV = "TUNEBOARD_INJECT_KILL_BEFORE_MARKER_AT_STEP"


def real_config(**training: Any) -> dict[str, Any]:
    """The demo job made tiny: 64 rows, batch 2, no evaluation, one metric point per step."""
    cfg = config_to_dict(demo_config())
    cfg["name"] = "fault test"
    cfg["dataset"].update(num_rows=64, eval_fraction=0.0)
    cfg["training"].update(batch_size=2, eval_steps=0, logging_steps=1, save_total_limit=10)
    cfg["training"].update(training)
    return cfg


def fake_config(behaviour: str) -> dict[str, Any]:
    """A CPU job whose name tells the fake trainer what to do (see tests/fakes/fake_trainer.py)."""
    return {"name": behaviour, "resources": {"gpus": 0}}


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AppProcess:
    """`uvicorn --factory app.main:create_app` on a fixed port and data dir; restartable on both."""

    data_dir: Path
    worker_module: str = FAKE_TRAINER
    cpu_slots: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        """Base URL of the app."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The app's own stdout/stderr (kept for a failing test's report)."""
        return self.data_dir.parent / f"app-{self.port}.log"

    def env(self) -> dict[str, str]:
        """The app's environment; its training children inherit it (minus secrets)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBOARD_")}
        env.update(
            {
                "TUNEBOARD_DATA_DIR": str(self.data_dir),
                "TUNEBOARD_PORT": str(self.port),
                "TUNEBOARD_GPU_SLOTS": "",  # CPU slots only, whatever this machine has
                "TUNEBOARD_CPU_SLOTS": str(self.cpu_slots),
                "TUNEBOARD_WORKER_MODULE": self.worker_module,
                "TUNEBOARD_SCHEDULER_INTERVAL_S": "0.1",
                "TUNEBOARD_HEARTBEAT_TIMEOUT_S": "60",
                "TUNEBOARD_CANCEL_GRACE_S": "5",
                "TUNEBOARD_SSE_BATCH_INTERVAL_S": "0.1",
                "TUNEBOARD_DEBUG_ENDPOINTS": "true",
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
                "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        if "TUNEBOARD_CACHE_DIR" in os.environ:
            env["TUNEBOARD_CACHE_DIR"] = os.environ["TUNEBOARD_CACHE_DIR"]
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start the app and wait until /api/health answers."""
        assert self.proc is None or self.proc.poll() is not None, "the app is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with self.log_path.open("ab") as log:
            log.write(f"==== start {self.starts + 1} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.starts += 1
        proc = self.proc

        def answering() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the app exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(answering, timeout, "/api/health to answer 200", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def kill9(self) -> None:
        """SIGKILL the app (no lifespan shutdown, no goodbye to anyone)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the app and wait for a clean shutdown (SIGKILL after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the app's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no app log)"

    # --- HTTP -------------------------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET an /api path; the JSON answer (fails on a non-2xx)."""
        response = httpx.get(f"{self.url}{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, json_body: Any = None) -> Any:
        """POST an /api path with a JSON body; the JSON answer (fails on a non-2xx)."""
        response = httpx.post(f"{self.url}{path}", json=json_body, timeout=10)
        assert response.is_success, f"POST {path}: {response.status_code} {response.text}"
        return response.json()

    def submit(self, config: dict[str, Any]) -> int:
        """POST /api/jobs; the new job's id."""
        return int(self.post("/api/jobs", config)["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        """GET /api/jobs/{id} (summary, config, stderr tail)."""
        data: dict[str, Any] = self.get(f"/api/jobs/{job_id}")
        return data

    def wait_job(
        self, job_id: int, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll the job until `predicate(job)` holds; the job then."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any]:
            nonlocal last
            last = self.job(job_id)
            return last

        try:
            return wait_until(check, timeout, f"job {job_id}: {what}", until=predicate)
        except AssertionError:
            # the job's own words say more than its whole record: status, reason, stderr, the app's log
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for job {job_id}: {what}; last seen: "
                f"status={last.get('status')} reason={last.get('failure_reason')}\n"
                f"stderr tail: {(last.get('stderr_tail') or '')[-1500:]}\napp log:\n{self.log_tail()}"
            ) from None

    def wait_terminal(self, job_id: int, timeout: float) -> dict[str, Any]:
        """Wait until the job is succeeded, failed or cancelled."""
        return self.wait_job(job_id, lambda j: j["status"] in TERMINAL, timeout, "a final status")

    # --- files and the database ------------------------------------------------------------------

    def run_dir(self, job_id: int) -> RunDir:
        """RUN_DIR of a job, as the database records it (DATA_DIR/runs/job-ID-RANDOM once claimed)."""

        def recorded() -> str | None:
            with self.db() as conn:
                row = conn.execute("SELECT run_dir FROM job WHERE id = ?", (job_id,)).fetchone()
            return str(row[0]) if row and row[0] else None

        return RunDir(Path(wait_until(recorded, 30, f"job {job_id}'s run directory to be recorded")))

    def worker_pid(self, job_id: int) -> int:
        """The pid of the job's latest training process (from RUN_DIR/launcher.json)."""
        path = self.run_dir(job_id).root / "launcher.json"
        record = wait_until(lambda: _read_json(path), 30, f"{path} to be written")
        return int(record["pid"])

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the app's SQLite file."""
        path = self.data_dir / "tuneboard.db"
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def metric_rows(self, job_id: int) -> list[tuple[str, int, float | None, str | None]]:
        """Every stored metric point of a job: (key, step, value, nonfinite)."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT key, step, value, nonfinite FROM metric WHERE job_id = ? ORDER BY key, step",
                (job_id,),
            ).fetchall()
        return [(str(k), int(s), v, n) for k, s, v, n in rows]

    def event_seqs(self, job_id: int) -> list[int]:
        """Seqs of the stored non-metric events of a job."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT seq FROM job_event WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def kill_workers(self) -> None:
        """SIGKILL every training process this app's data dir launched that still runs (test hygiene)."""
        for record in (self.data_dir / "runs").glob("job-*/launcher.json"):
            data = _read_json(record)
            if not data:
                continue
            try:
                proc = psutil.Process(int(data["pid"]))
                if str(record.parent) in proc.cmdline():
                    os.killpg(proc.pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Stop the app and whatever training processes it left."""
        try:
            self.stop()
        finally:
            self.kill_workers()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def spooled_metrics(rd: RunDir) -> dict[tuple[str, int], Any]:
    """(key, step) → value of every metric the worker spooled; a later event for a step wins (a resume)."""
    found: dict[tuple[str, int], Any] = {}
    for event in read_spool(rd.events):
        if event["kind"] == "metric":
            for key, value in event["payload"].items():
                found[(key, int(event["step"]))] = value
    return found


def loss_steps(events: list[dict[str, Any]]) -> list[int]:
    """Steps of the loss points among `events`, in spool order."""
    return [int(e["step"]) for e in events if e["kind"] == "metric" and "loss" in e["payload"]]


def assert_stored_exactly_once(app: AppProcess, job_id: int) -> int:
    """Every metric and event in the job's spool is in the database once, with the spooled value; nothing
    else is. Returns the number of loss points checked."""
    rd = app.run_dir(job_id)
    spooled = spooled_metrics(rd)
    rows = app.metric_rows(job_id)
    twice = [k for k, n in Counter((key, step) for key, step, _, _ in rows).items() if n > 1]
    assert not twice, f"metric points stored more than once: {twice[:10]}"
    stored = {(key, step): (value, nonfinite) for key, step, value, nonfinite in rows}
    missing = sorted(set(spooled) - set(stored))
    extra = sorted(set(stored) - set(spooled))
    assert not missing, f"{len(missing)} spooled metric point(s) never stored, e.g. {missing[:10]}"
    assert not extra, f"{len(extra)} stored metric point(s) the worker never produced, e.g. {extra[:10]}"
    for point, value in spooled.items():
        got, nonfinite = stored[point]
        if isinstance(value, str):
            assert got is None and nonfinite == value, (point, value, got, nonfinite)
        else:
            assert got is not None and abs(got - float(value)) <= 1e-9 * max(1.0, abs(float(value))), (
                point,
                value,
                got,
            )
    spool_events = [e["seq"] for e in read_spool(rd.events) if e["kind"] != "metric"]
    assert app.event_seqs(job_id) == spool_events, "the stored events differ from the spooled ones"
    return sum(1 for key, _ in spooled if key == "loss")
