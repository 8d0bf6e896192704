"""GPU discovery: configured slots, NVML, and no GPUs at all."""

from __future__ import annotations

import sys

import pytest

from app.scheduler.gpus import discover_nvml_gpus, discover_slots, parse_gpu_slots
from app.settings import Settings


def test_configured_gpu_slots_are_used_as_given(tmp_path) -> None:
    slots = discover_slots(Settings(data_dir=tmp_path, gpu_slots=" 0, 2 ,0", cpu_slots=3))
    assert slots.gpus == ("0", "2")
    assert slots.cpu_slots == 3


def test_empty_gpu_slots_means_cpu_only(tmp_path) -> None:
    slots = discover_slots(Settings(data_dir=tmp_path, gpu_slots="", cpu_slots=1))
    assert slots.gpus == ()
    assert slots.describe() == "no GPUs and 1 CPU slot"


def test_a_gpu_slot_that_is_not_an_index_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="such as 0,1"):
        parse_gpu_slots("0,cuda:1")


def test_missing_nvml_library_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert discover_nvml_gpus() == ()


def test_nvml_without_a_driver_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert discover_nvml_gpus() == ()


def test_nvml_reports_each_device_index(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 3)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    assert discover_nvml_gpus() == ("0", "1", "2")
