"""The Ray launcher against a real local Ray head (CPU, 2 fake GPUs, token auth), driven by a live app.

Needs the optional extra `tuneboard[ray]` (CI installs it). One head serves the whole module (starting
one costs ~7 s). Jobs run the fake trainer (tests/fakes), which
reports over HTTP like the real worker; the real worker through Ray is in test_ray_real_worker.py.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.main import create_app
from app.models import Task
from app.scheduler.launcher import LaunchSpec
from app.scheduler.local import LocalLauncher
from app.scheduler.ray_launcher import RayLauncher
from app.scheduler.runner import make_launcher
from app.scheduler.tasks import task_launcher
from app.settings import Settings
from app.tasks.manager import TaskManager
from contract.protocol import read_spool
from tests.app.conftest import serving
from tests.app.conftest import wait_job as wait_app_job
from tests.app.scheduler.conftest import REPO_ROOT, distinct_unused_ports
from tests.app.scheduler.test_tasks import HELD_MERGE, finished_job
from tests.waiting import wait_until
from tests.worker.training_runs import PRESET_CACHE, demo_dict

RAY_START_TIMEOUT_S = 90


@dataclass(frozen=True)
class RayHead:
    """A running local Ray head: its Jobs API address and auth token."""

    address: str
    token: str


def _stop_head(starter: subprocess.Popen[bytes]) -> None:
    """Stop the processes this fixture started: `ray start`'s process group and whatever they spawned."""
    group = starter.pid
    family: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == group:
                family.append(proc)
                family.extend(proc.children(recursive=True))
        except (ProcessLookupError, psutil.Error):
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in family:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(family, timeout=3)
        family = alive
        if not family:
            break


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """`ray start --head` with 2 CPUs and 2 fake GPUs on loopback, token auth on; stopped afterwards."""
    temp = tmp_path_factory.mktemp("ray")
    token = secrets.token_hex(16)
    # Ray refuses to start when two of its components are given the same port
    gcs_port, dashboard_port, agent_port, client_port = distinct_unused_ports(4)
    env = dict(os.environ)
    env.update(
        {
            "RAY_AUTH_MODE": "token",  # both sides must agree (qlora-facts): the app sends the token
            "RAY_AUTH_TOKEN": token,
            # the job driver inherits this environment: it must import this checkout's tests/ package
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # real training jobs share the test session's preset cache (tests/worker/training_runs.py)
            "TUNEBOARD_CACHE_DIR": str(PRESET_CACHE),
        }
    )
    argv = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--num-cpus=2",
        "--num-gpus=2",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_port}",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    log = (temp / "ray-start.log").open("wb")
    starter = subprocess.Popen(
        argv, cwd=temp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        rc = starter.wait(timeout=RAY_START_TIMEOUT_S)
        assert rc == 0, f"ray start failed ({rc}): {(temp / 'ray-start.log').read_text()[-3000:]}"
        address = f"http://127.0.0.1:{dashboard_port}"

        def version_answer() -> int | str:
            try:
                return httpx.get(f"{address}/api/version", timeout=2).status_code
            except httpx.HTTPError as exc:
                return repr(exc)

        # the Jobs API answers a little after `ray start` returns
        wait_until(
            version_answer,
            30,
            "the Ray dashboard to come up",
            interval=0.2,
            until=lambda answer: isinstance(answer, int) and answer < 500,
        )
        yield RayHead(address=address, token=token)
    finally:
        _stop_head(starter)
        log.close()


@pytest.fixture
def ray_settings(settings: Settings, ray_head: RayHead) -> Settings:
    """The scheduler tests' settings (fake trainer, GPUs "0,1"), launching through the Ray head."""
    settings.launcher = "ray"
    settings.ray_address = ray_head.address
    settings.ray_auth_token = ray_head.token
    settings.ray_worker_python = sys.executable
    settings.ray_log_sync_s = 0.5
    settings.scheduler_enabled = True
    settings.scheduler_interval_s = 0.1
    settings.heartbeat_timeout_s = 30.0
    settings.cancel_grace_s = 30.0  # Ray's own stop wait decides here
    return settings


@pytest.fixture
def serve(ray_settings: Settings) -> Iterator[Any]:
    """Factory: serve(**overrides) runs the app (scheduler on, Ray launcher) and yields an httpx client."""
    with ExitStack() as servers:

        def start(**overrides: Any) -> httpx.Client:
            for key, value in overrides.items():
                setattr(ray_settings, key, value)
            servers.enter_context(serving(create_app(ray_settings), ray_settings.port))
            return httpx.Client(base_url=ray_settings.app_url, timeout=10)

        yield start


def wait_job(client: httpx.Client, job_id: int, statuses: set[str], timeout: float = 40.0) -> dict[str, Any]:
    """Poll the API until the job reaches one of `statuses` (40 s by default: room for Ray's own start-up
    of each job)."""
    return wait_app_job(client, job_id, statuses, timeout)


def app_run_dir(settings: Settings, job_id: int) -> Path:
    """The app's run directory of a job (job-<id>-<random>, the only one of that job)."""
    (found,) = settings.runs_dir.glob(f"job-{job_id}-*")
    return found


def submit(client: httpx.Client, name: str, gpus: int = 1) -> int:
    """Queue a fake-trainer job; its name tells the fake what to do."""
    created = client.post("/api/jobs", json={"name": name, "resources": {"gpus": gpus}})
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def test_a_job_runs_as_a_ray_job_reports_over_http_and_its_adapter_downloads(
    serve: Any, ray_settings: Settings
) -> None:
    with serve() as client:
        job_id = submit(client, "sleep=0.6 adapter=1", gpus=1)
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["failure_reason"]
        loss = client.get(f"/api/jobs/{job_id}/metrics", params={"keys": "loss"}).json()["series"]["loss"]
        assert len(loss) >= 3 and loss[0] == [1, 2.0]  # ingested over HTTP from the Ray job
        run_dir = app_run_dir(ray_settings, job_id)
        record = json.loads((run_dir / "launcher.json").read_text())
        assert record["launcher"] == "ray" and record["submission_id"].startswith("tuneboard-")
        fake_env = json.loads((run_dir / "fake-env.json").read_text())
        assert fake_env["CUDA_VISIBLE_DEVICES"] in ("0", "1")  # Ray placed it on one (fake) GPU
        # the runtime env carries what the worker needs, never the app's secrets (the Ray token included)
        assert "TUNEBOARD_DATASETS_DIR" in fake_env["tuneboard_env"]
        assert not [k for k in fake_env["tuneboard_env"] if "TOKEN" in k or "DATABASE" in k]
        assert "fake trainer: step 1" in done["stderr_tail"]  # Ray's job log, copied into RUN_DIR
        adapter = client.get(f"/api/jobs/{job_id}/adapter")
        assert adapter.status_code == 200
        names = zipfile.ZipFile(io.BytesIO(adapter.content)).namelist()
        assert "adapter_model.safetensors" in names


def test_a_remote_worker_gets_its_files_from_the_env_and_uploads_its_outputs(
    serve: Any, ray_settings: Settings, tmp_path: Path
) -> None:
    remote = tmp_path / "node-disk"
    with serve(ray_remote_runs_dir=str(remote)) as client:
        job_id = submit(client, "sleep=0.5 adapter=1", gpus=0)
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done["failure_reason"]
    app_run = app_run_dir(ray_settings, job_id)
    node_run = remote / app_run.name  # the node's directory carries the app's unique name
    # the node built its own RUN_DIR from the runtime env; job.json holds the token, so 0600
    assert json.loads((node_run / "config.json").read_text())["name"] == "sleep=0.5 adapter=1"
    assert (node_run / "job.json").stat().st_mode & 0o777 == 0o600
    assert not (app_run / "fake-env.json").exists()  # the worker never wrote into the app's RUN_DIR
    # ...but its adapter, complete checkpoint and outcome came back through the upload endpoint
    for relative in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "outcome.json"):
        assert (app_run / relative).read_bytes() == (node_run / relative).read_bytes(), relative
    checkpoints = sorted(p.name for p in (app_run / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (app_run / "checkpoints" / checkpoints[0] / "COMPLETE").is_file()


def test_cancel_stops_the_ray_job_with_enough_grace_to_checkpoint(serve: Any, ray_settings: Settings) -> None:
    # the fake needs 4 s to "save a checkpoint" after SIGTERM; Ray's default wait (3 s) would SIGKILL it
    with serve(ray_stop_wait_s=20) as client:
        job_id = submit(client, "sleep=60 term_delay=4", gpus=1)
        wait_job(client, job_id, {"running"})
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"})
    assert done["status"] == "cancelled", done["failure_reason"]
    assert done["exit_code"] == 3  # from the worker's own outcome.json: it finished its graceful stop
    outcome = json.loads((app_run_dir(ray_settings, job_id) / "outcome.json").read_text())
    assert outcome["reason"] == "stopped on request"


def test_a_wrong_ray_token_fails_the_job_with_a_reason_naming_the_setting(serve: Any) -> None:
    with serve(ray_auth_token="not-the-token") as client:
        job_id = submit(client, "sleep=0.2", gpus=0)
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"})
    assert done["status"] == "failed"
    assert "TUNEBOARD_RAY_AUTH_TOKEN" in done["failure_reason"]


@pytest.mark.training
def test_the_real_worker_trains_on_two_gpus_of_a_remote_ray_node_and_its_adapter_downloads_from_the_app(
    serve: Any, ray_settings: Settings, tmp_path: Path
) -> None:
    config = demo_dict(max_steps=2, save_steps=2, eval_steps=0)  # tiny Gemma 3n, nf4, on CPU
    # 2 (fake) GPUs: Ray gives the job both, and the worker trains data-parallel under torchrun (gloo here)
    config["resources"]["gpus"] = 2
    with serve(worker_module="worker.train", ray_remote_runs_dir=str(tmp_path / "node-disk")) as client:
        created = client.post("/api/jobs", json=config)
        assert created.status_code == 201, created.text
        job_id = int(created.json()["id"])
        done = wait_job(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", f"{done['failure_reason']}\n{done['stderr_tail']}"
        loss = client.get(f"/api/jobs/{job_id}/metrics", params={"keys": "loss"}).json()["series"]["loss"]
        assert [point[0] for point in loss] == [1, 2]
        adapter = client.get(f"/api/jobs/{job_id}/adapter")
        assert adapter.status_code == 200, adapter.text
        names = set(zipfile.ZipFile(io.BytesIO(adapter.content)).namelist())
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= names
    app_run = app_run_dir(ray_settings, job_id)
    checkpoint = app_run / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "COMPLETE").is_file()  # uploaded, marker included
    assert (checkpoint / "rng_state_0.pth").is_file() and (
        checkpoint / "rng_state_1.pth"
    ).is_file()  # 2 ranks
    node_events = read_spool(tmp_path / "node-disk" / app_run.name / "events.jsonl")
    assert [e["seq"] for e in node_events] == list(range(1, len(node_events) + 1))  # rank 0 alone wrote
    assert [e["payload"]["status"] for e in node_events if e["kind"] == "status"] == ["running"]
    assert json.loads((app_run / "outcome.json").read_text())["status"] == "succeeded"
    assert not (app_run / "events.jsonl").exists()  # the spool stayed on the node; events came over HTTP


def test_a_merged_export_runs_as_a_ray_job_on_its_gpu_and_succeeds(
    ray_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    ray_settings.task_gpus = "0"  # the task holds a GPU: its Ray job asks Ray for one
    run_dir = tmp_path / "run"
    job_id = finished_job(session_factory, run_dir)
    (run_dir / "release").touch()  # the held stand-in finishes as soon as it has started
    app = create_app(ray_settings)
    manager = TaskManager(ray_settings)
    manager.merge_module = HELD_MERGE
    app.state.tasks = manager
    with serving(app, ray_settings.port), httpx.Client(base_url=ray_settings.app_url, timeout=10) as client:
        assert client.post(f"/api/jobs/{job_id}/export-merged").status_code == 202
        done = wait_until(
            lambda: client.get(f"/api/jobs/{job_id}/export-merged").json(),
            40,
            "the merge to finish through Ray",
            interval=0.2,
            until=lambda status: status["state"] not in ("starting", "running"),
        )
        assert done["state"] == "succeeded", done
    with session_factory() as session:
        task = session.scalars(select(Task).where(Task.job_id == job_id)).one()
    assert (task.status, task.launcher, task.pid) == ("succeeded", "ray", None), task.failure_reason
    assert task.external_id is not None and task.external_id.startswith("tuneboard-")
    info = RayLauncher(ray_settings).client.get_job_info(task.external_id)
    assert str(getattr(info.status, "value", info.status)) == "SUCCEEDED"
    assert info.metadata["tuneboard_task_id"] == str(task.id)
    gpus = json.loads((run_dir / "held-merge-env.json").read_text())["CUDA_VISIBLE_DEVICES"]
    assert gpus in ("0", "1")  # Ray gave the entrypoint one (fake) GPU
    assert HELD_MERGE in info.entrypoint and str(run_dir) in info.entrypoint
    assert (run_dir / "merged").is_dir()
    assert task.input_path is not None and not Path(task.input_path).exists()  # cleaned up afterwards


def test_tasks_stay_local_when_ray_nodes_do_not_share_the_data_dir(settings: Settings) -> None:
    settings.launcher = "ray"
    settings.ray_address = "http://ray-head:8265"
    assert isinstance(task_launcher(settings), RayLauncher)  # shared storage: tasks are Ray jobs too
    settings.ray_remote_runs_dir = "/scratch/runs"
    assert isinstance(task_launcher(settings), LocalLauncher)  # the output must land in DATA_DIR


def test_a_task_entrypoint_sends_its_output_to_the_task_s_files(settings: Settings, tmp_path: Path) -> None:
    settings.ray_address = "http://ray-head:8265"
    spec = LaunchSpec(
        job_id=3,
        run_dir=tmp_path / "run dir",
        gpus=(),
        attempt=1,
        module="worker.tasks.generate",
        args=("--config", str(tmp_path / "tmp" / "try config.json")),
        log_path=tmp_path / "run dir" / "try.log",
        stdout_path=tmp_path / "out; rm -rf x",
        task_id=9,
    )
    words = shlex.split(RayLauncher(settings).task_entrypoint(spec))
    assert words == [
        settings.ray_worker_python,
        "-m",
        "worker.tasks.generate",
        str(tmp_path / "run dir"),
        "--config",
        str(tmp_path / "tmp" / "try config.json"),
        ">>",
        str(tmp_path / "out; rm -rf x"),
        "2>>",
        str(tmp_path / "run dir" / "try.log"),
    ]


def test_the_entrypoint_quotes_every_word_so_ray_s_shell_runs_exactly_the_worker(settings: Settings) -> None:
    settings.ray_address = "http://ray-head:8265"
    settings.ray_worker_python = "/opt/my python/bin/python"
    launcher = RayLauncher(settings)
    hostile = "/data/runs/job-1; touch pwned"
    assert shlex.split(launcher.entrypoint(hostile)) == [
        "/opt/my python/bin/python",
        "-m",
        settings.worker_module,
        hostile,
    ]


def test_remote_mode_sends_config_and_job_in_the_runtime_env_and_asks_for_uploads(
    settings: Settings, tmp_path: Path
) -> None:
    settings.ray_address = "http://ray-head:8265"
    settings.ray_remote_runs_dir = "/scratch/runs"
    settings.ray_stop_wait_s = 77
    run = tmp_path / "job-5-0a1b2c3d4e5f"
    run.mkdir()
    (run / "config.json").write_text('{"name": "x"}')
    (run / "job.json").write_text('{"job_id": 5, "app_url": "http://app:8000", "token": "t"}')
    launcher = RayLauncher(settings)
    spec = LaunchSpec(job_id=5, run_dir=run, gpus=("0",), attempt=1)
    env = launcher.runtime_env(spec)["env_vars"]
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "77"
    assert json.loads(env["TUNEBOARD_CONFIG_JSON"]) == {"name": "x"}
    assert json.loads(env["TUNEBOARD_JOB_JSON"]) == {
        "job_id": 5,
        "app_url": "http://app:8000",
        "token": "t",
        "upload": True,
    }
    assert launcher.worker_run_dir(run, 5) == "/scratch/runs/job-5-0a1b2c3d4e5f"
    settings.ray_remote_runs_dir = None  # shared storage: the node uses the app's path, nothing in the env
    shared = RayLauncher(settings)
    assert "TUNEBOARD_JOB_JSON" not in shared.runtime_env(spec)["env_vars"]
    assert shared.worker_run_dir(run, 5) == str(run)


def test_the_ray_launcher_without_an_address_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TUNEBOARD_RAY_ADDRESS"):
        make_launcher(Settings(data_dir=tmp_path, launcher="ray"))
