"""On a machine with NVIDIA GPUs: real NVML discovery, and CUDA_VISIBLE_DEVICES really isolates jobs.

These need the hardware, so they run only where NVML finds a GPU (the GPU machine, not CI).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.scheduler.gpus import discover_nvml_gpus, discover_slots
from app.scheduler.local import LocalLauncher
from app.scheduler.supervisor import Supervisor
from app.settings import Settings

pytestmark = pytest.mark.skipif(not discover_nvml_gpus(), reason="needs an NVIDIA GPU (NVML finds none here)")


def test_nvml_discovery_finds_the_gpus_nvidia_smi_lists(settings: Settings) -> None:
    settings.gpu_slots = None
    slots = discover_slots(settings)
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
        assert len(slots.gpus) == len([line for line in listed.splitlines() if line.startswith("GPU ")])
    assert slots.gpus == tuple(str(i) for i in range(len(slots.gpus)))


def test_a_gpu_job_sees_its_gpu_and_a_cpu_job_sees_none(
    kit, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    pytest.importorskip("torch")
    settings.gpu_slots = None
    sup = Supervisor(
        settings=settings,
        session_factory=session_factory,
        launcher=LocalLauncher(worker_module=settings.worker_module),
        slots=discover_slots(settings),
    )
    gpu_job = kit.queue("sleep=0 probe_cuda=1", gpus=1)
    cpu_job = kit.queue("sleep=0 probe_cuda=1", gpus=0)
    kit.tick_until(
        lambda: all(kit.job(i).status in ("succeeded", "failed") for i in (gpu_job, cpu_job)),
        timeout=120,
        sup=sup,
    )
    for job_id in (gpu_job, cpu_job):
        assert kit.job(job_id).status == JobStatus.SUCCEEDED, kit.job(job_id).failure_reason
    seen = {
        i: json.loads((Path(kit.job(i).run_dir) / "fake-cuda.json").read_text()) for i in (gpu_job, cpu_job)
    }
    assert seen[gpu_job]["device_count"] == 1 and kit.job(gpu_job).assigned_gpus == "0"
    assert seen[cpu_job]["device_count"] == 0
    print("GPU job saw:", seen[gpu_job]["names"])
