"""The speed levers' settings: config fields resolved once into the run plan, never environment variables.

(worker/train/speed/switches.py, worker/train/speed/plan.py, contract/plan.py)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.config import ConfigError, config_to_dict, demo_config, parse_config
from contract.plan import RunPlan, read_plan, write_plan
from worker.train.speed.plan import LEVER_NAMES, resolve_plan

# Every lever variable the worker used to read, each set to a value that would have changed a job.
LEVER_ENV = {
    "TUNEBOARD_TORCH_DEQUANT": "1",
    "TUNEBOARD_HOST_TABLES": "1",
    "TUNEBOARD_OFFLOAD_ACTIVATIONS": "1",
    "TUNEBOARD_OFFLOAD_PREFETCH": "0",
    "TUNEBOARD_ALTUP_SUM": "1",
    "TUNEBOARD_COMPILE": "1",
    "TUNEBOARD_COMPILE_BACKEND": "aot_eager",
    "TUNEBOARD_COMPILE_OPTIONS": '{"cpp_wrapper": true}',
    "TUNEBOARD_FUSED_LOSS": "1",
    "TUNEBOARD_FUSED_LOSS_CHUNK_ROWS": "7",
    "TUNEBOARD_FORCE_TORCHRUN": "1",
}


def _levers(plan: RunPlan) -> dict[str, object]:
    return {name: choice.value for name, choice in plan.levers.items()}


def test_every_lever_is_auto_by_default_and_the_plan_says_why() -> None:
    cfg = demo_config()
    assert {k: v for k, v in config_to_dict(cfg)["speed"].items()} == {
        "torch_dequant": "auto",
        "host_tables": "auto",
        "offload_activations": "auto",
        "offload_prefetch": "auto",
        "altup_sum": "auto",
        "compile_backend": "auto",
        "compile_options": None,
        "fused_loss": "auto",
        "fused_loss_chunk_rows": None,
        "force_torchrun": "auto",
    }
    cpu = resolve_plan(cfg, device="cpu")
    assert list(cpu.levers) == list(LEVER_NAMES)
    assert all(choice.source == "default" for choice in cpu.levers.values())
    assert not cpu.is_on("compile") and not cpu.is_on("host_tables") and not cpu.is_on("offload_activations")
    assert cpu.levers["host_tables"].reason == "default off on CPU (the tables are in host memory already)"
    long_run = cfg.model_copy(deep=True)
    long_run.training.max_steps = 500
    gpu = resolve_plan(long_run, device="cuda")
    assert gpu.is_on("compile") and gpu.is_on("torch_dequant") and gpu.is_on("altup_sum")
    assert gpu.is_on("host_tables") and gpu.is_on("offload_activations") and gpu.is_on("offload_prefetch")
    assert "at least 200 steps" in gpu.levers["compile"].reason
    assert (
        resolve_plan(cfg, device="cuda", world_size=2)
        .levers["compile"]
        .reason.startswith("default off with 2 GPU processes")
    )


def test_a_lever_set_in_the_config_wins_and_says_so() -> None:
    cfg = demo_config()
    cfg.speed.host_tables = "on"
    cfg.speed.offload_activations = "on"
    cfg.speed.offload_prefetch = "off"
    cfg.speed.fused_loss_chunk_rows = 0
    cfg.training.torch_compile = "on"
    plan = resolve_plan(cfg, device="cpu")
    assert plan.levers["host_tables"].value is True and plan.levers["host_tables"].source == "config"
    assert plan.levers["host_tables"].reason == "set in config (speed.host_tables: on)"
    assert plan.is_on("offload_activations") and not plan.is_on("offload_prefetch")
    assert plan.levers["compile"].reason == "set in config (training.torch_compile: on)"
    # the levers that follow compilation follow it, on CPU too
    assert plan.is_on("altup_sum") and plan.is_on("torch_dequant")
    assert plan.value("fused_loss_chunk_rows") == 0


def test_unknown_or_unreadable_lever_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"speed": {"host_table": "on"}})
    assert "speed.host_table" in err.value.problems
    with pytest.raises(ConfigError) as err:
        parse_config({"speed": {"offload_activations": "maybe"}})
    assert "speed.offload_activations" in err.value.problems


def test_a_benchmark_override_lands_in_the_plan_as_an_override() -> None:
    plan = resolve_plan(demo_config(), device="cpu", overrides={"altup_sum": "on", "compile": "off"})
    assert plan.levers["altup_sum"].source == "override" and plan.is_on("altup_sum")
    assert plan.levers["altup_sum"].reason == "benchmark override altup_sum=on"
    assert plan.overrides == {"altup_sum": "on", "compile": "off"}
    with pytest.raises(ValueError, match="unknown speed lever"):
        resolve_plan(demo_config(), device="cpu", overrides={"warp_drive": "on"})


def test_a_compile_fallback_takes_the_levers_that_follow_it_back_to_eager() -> None:
    cfg = demo_config()
    cfg.training.torch_compile = "on"
    plan = resolve_plan(cfg, device="cuda", compile_fallback="compile failed: fell back to eager")
    assert plan.levers["compile"].source == "fallback" and not plan.is_on("compile")
    assert not plan.is_on("altup_sum") and not plan.is_on("torch_dequant")


def test_the_plan_round_trips_through_its_file_and_the_app_can_read_it(tmp_path: Path) -> None:
    plan = resolve_plan(demo_config(), device="cpu")
    plan.set("micro_batch", "8 × 1", "config", "set in config")
    write_plan(tmp_path / "plan.json", plan)
    again = read_plan(tmp_path / "plan.json")
    assert again is not None and again.to_dict() == plan.to_dict()
    assert again.levers["micro_batch"].shown == "8 × 1" and again.levers["host_tables"].shown == "off"
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    assert read_plan(tmp_path / "broken.json") is None and read_plan(tmp_path / "absent.json") is None


def test_setting_every_lever_variable_on_the_server_changes_no_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = demo_config()
    quiet = {device: _levers(resolve_plan(cfg, device=device)) for device in ("cpu", "cuda")}
    for name, value in LEVER_ENV.items():
        monkeypatch.setenv(name, value)
    assert {device: _levers(resolve_plan(cfg, device=device)) for device in ("cpu", "cuda")} == quiet


@pytest.mark.slow  # trains or compiles a real model
def test_setting_every_lever_variable_on_the_server_changes_no_job(tmp_path: Path) -> None:
    """A real training child, with every lever variable set, runs the plan its config says."""
    from tests.worker.training_runs import demo_dict, new_run_dir, run_child

    config = demo_dict(max_steps=2, eval_steps=0, save_steps=2)
    finished = run_child(new_run_dir("levers-env", config), **LEVER_ENV)
    assert finished.returncode == 0, finished.stderr[-3000:]
    plan = read_plan(finished.run_dir.plan)
    assert plan is not None
    expected = resolve_plan(parse_config(config), device="cpu")
    for name in LEVER_NAMES:
        assert plan.value(name) == expected.value(name) or name == "fused_loss", name
    assert plan.value("fused_loss") is False  # off on CPU: TUNEBOARD_FUSED_LOSS=1 did not turn it on
    assert all(choice.source not in ("override",) for choice in plan.levers.values())
    assert plan.overrides == {}
    # reported once as an event, and copied next to the adapter
    (event,) = finished.of_kind("plan")
    assert event["payload"] == plan.to_dict()
    assert json.loads((finished.run_dir.adapter / "tuneboard_plan.json").read_text()) == plan.to_dict()
    messages = [e["payload"]["message"] for e in finished.of_kind("log")]
    assert not any("compiled" in m or "offloaded" in m or "CPU memory, rows copied" in m for m in messages)


def test_force_torchrun_is_read_from_the_config_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contract.rundir import RunDir
    from worker.train.distributed import torchrun_forced

    rd = RunDir(tmp_path)
    cfg = config_to_dict(demo_config())
    rd.config.write_text(json.dumps(cfg), encoding="utf-8")
    monkeypatch.setenv("TUNEBOARD_FORCE_TORCHRUN", "1")
    assert not torchrun_forced(tmp_path)
    cfg["speed"]["force_torchrun"] = "on"
    rd.config.write_text(json.dumps(cfg), encoding="utf-8")
    assert torchrun_forced(tmp_path)


def test_rebind_replaces_an_instance_method_once_and_keeps_the_stock_one() -> None:
    import torch

    from worker.train.rebind import is_rebound, rebind

    layer, other = torch.nn.Identity(), torch.nn.Identity()
    assert rebind(layer, "forward", lambda self, x: self._tuneboard_stock_forward(x) + 1)
    assert not rebind(layer, "forward", lambda self, x: x * 0)  # already rebound: left as it is
    assert is_rebound(layer, "forward") and not is_rebound(other, "forward")
    assert layer(torch.ones(2)).tolist() == [2.0, 2.0]
    assert other(torch.ones(2)).tolist() == [1.0, 1.0]  # the class is untouched
