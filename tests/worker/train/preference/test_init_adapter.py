"""init_adapter: job:<id> is found among the run folders beside this run's; what cannot be used is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.train.preference.init_adapter import InitAdapterError, resolve_init_adapter


def _run(runs: Path, name: str, *, adapter: bool) -> Path:
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    if adapter:
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    return run


def test_a_job_reference_finds_that_jobs_adapter_beside_this_run(tmp_path: Path) -> None:
    here = _run(tmp_path, "job-9-00aa11", adapter=False)
    sft = _run(tmp_path, "job-3-abc123", adapter=True)
    _run(tmp_path, "job-33-ffee00", adapter=True)  # another id that starts the same
    assert resolve_init_adapter("job:3", here) == sft / "adapter"
    assert resolve_init_adapter(str(sft), here) == sft / "adapter"  # a run folder as a path
    assert resolve_init_adapter(str(sft / "adapter"), here) == sft / "adapter"


def test_what_cannot_be_used_is_refused_naming_init_adapter(tmp_path: Path) -> None:
    here = _run(tmp_path, "job-9-00aa11", adapter=False)
    _run(tmp_path, "job-4-abc123", adapter=False)
    with pytest.raises(InitAdapterError, match="did not finish") as caught:
        resolve_init_adapter("job:4", here)
    assert set(caught.value.problems) == {"init_adapter"}
    with pytest.raises(InitAdapterError, match="no run of job 5"):
        resolve_init_adapter("job:5", here)
    with pytest.raises(InitAdapterError, match="holds no adapter"):
        resolve_init_adapter(str(tmp_path / "nowhere"), here)
