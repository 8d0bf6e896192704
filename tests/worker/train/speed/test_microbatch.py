"""training.auto_micro_batch: the search over micro-batches, its record for resumes, and where it runs.

The search is tested with a memory function we control (the seam: a probe's peak bytes, or None for out of
memory); the CUDA probe itself runs in the GPU test at the end, skipped on machines without CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.config import ConfigError, parse_config
from contract.plan import RunPlan, read_plan, write_plan
from contract.protocol import ExitCode
from tests.worker.training_runs import demo_dict, trained_run
from worker.train.speed.microbatch import (
    LEGACY_SPLIT_FILE,
    Split,
    choose_split,
    divisors,
    load_legacy_split,
    split_from_dict,
)
from worker.train.speed.plan import record_micro_batch

GB = 10**9


def memory(per_row_gb: float, base_gb: float = 2.0, oom_above: int | None = None):  # type: ignore[no-untyped-def]
    """A probe whose peak grows linearly with the micro-batch, with a hard out-of-memory limit."""
    calls: list[int] = []

    def measure(m: int) -> int | None:
        calls.append(m)
        if oom_above is not None and m > oom_above:
            return None
        return int((base_gb + per_row_gb * m) * GB)

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def test_divisors_are_the_only_micro_batches_that_keep_the_step() -> None:
    assert divisors(16) == [1, 2, 4, 8, 16] and divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1]


def test_it_grows_the_micro_batch_while_the_next_one_fits() -> None:
    measure = memory(per_row_gb=0.5)
    split = choose_split(16, configured=8, measure=measure, budget_bytes=20 * GB)
    assert (split.micro_batch, split.grad_accum) == (16, 1)
    assert measure.calls == [8, 16]  # type: ignore[attr-defined]


def test_it_stops_at_the_budget_and_keeps_the_step_rows() -> None:
    measure = memory(per_row_gb=1.0)
    split = choose_split(48, configured=4, measure=measure, budget_bytes=15 * GB)  # fits up to 13 rows
    assert (split.micro_batch, split.grad_accum) == (12, 4)
    assert split.micro_batch * split.grad_accum == 48
    assert measure.calls == [4, 6, 8, 12, 16]  # type: ignore[attr-defined]
    assert split.tried[16] == 18 * GB


def test_an_out_of_memory_probe_counts_as_not_fitting() -> None:
    split = choose_split(32, configured=2, measure=memory(0.1, oom_above=8), budget_bytes=80 * GB)
    assert (split.micro_batch, split.grad_accum) == (8, 4) and split.tried[16] is None
    assert "16: out of memory" in split.describe()


def test_it_shrinks_the_micro_batch_when_the_configured_one_does_not_fit() -> None:
    measure = memory(per_row_gb=4.0, oom_above=8)
    split = choose_split(16, configured=16, measure=measure, budget_bytes=12 * GB)  # fits up to 2 rows
    assert (split.micro_batch, split.grad_accum) == (2, 8)
    assert measure.calls == [16, 8, 4, 2]  # type: ignore[attr-defined]


def test_when_nothing_fits_the_configured_split_is_kept_and_says_so() -> None:
    split = choose_split(8, configured=4, measure=memory(per_row_gb=50.0), budget_bytes=10 * GB)
    assert (split.micro_batch, split.grad_accum) == (4, 2)
    assert "not even a micro-batch of 1 fits" in split.describe()


def test_the_choice_is_saved_in_the_run_plan_for_a_resumed_run(tmp_path: Path) -> None:
    split = Split(16, 1, 70 * GB, {8: 5 * GB, 16: 9 * GB, 32: None})
    plan = RunPlan(device="cuda")
    record_micro_batch(plan, split, "probe", "the micro-batch probe chose 16")
    write_plan(tmp_path / "plan.json", plan)
    assert json.loads((tmp_path / "plan.json").read_text())["micro_batch"]["micro_batch"] == 16
    again = read_plan(tmp_path / "plan.json")
    assert again is not None and again.micro_batch is not None
    assert split_from_dict(again.micro_batch) == split
    assert again.levers["micro_batch"].value == "16 × 1" and again.levers["micro_batch"].source == "probe"


def test_a_run_started_before_the_plan_still_keeps_its_saved_split(tmp_path: Path) -> None:
    assert load_legacy_split(tmp_path) is None
    split = Split(16, 1, 70 * GB, {8: 5 * GB, 16: 9 * GB, 32: None})
    (tmp_path / LEGACY_SPLIT_FILE).write_text(
        json.dumps({"micro_batch": 16, "grad_accum": 1, "budget_bytes": 70 * GB, "tried": {"8": 5 * GB,
                    "16": 9 * GB, "32": None}, "note": ""}), encoding="utf-8"
    )  # fmt: skip
    assert load_legacy_split(tmp_path) == split


def test_the_config_asks_for_exactly_one_gpu() -> None:
    cfg = demo_dict(auto_micro_batch=True)
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "training.auto_micro_batch" in err.value.problems
    assert "resources.gpus to 1" in err.value.problems["training.auto_micro_batch"]
    cfg["resources"]["gpus"] = 1
    assert parse_config(cfg).training.auto_micro_batch == "on"


def test_auto_probes_only_on_one_gpu_with_micro_batches_to_merge() -> None:
    """The default: any GPU count is accepted, and the probe runs where it can make a step faster."""
    several = demo_dict(grad_accum=4)
    several["resources"]["gpus"] = 2
    training = parse_config(several).training
    assert training.auto_micro_batch == "auto"
    assert training.probes_micro_batch(one_gpu=True)
    assert not training.probes_micro_batch(one_gpu=False)  # CPU, or several GPU processes
    assert not parse_config(demo_dict(grad_accum=1)).training.probes_micro_batch(one_gpu=True)
    assert not parse_config(demo_dict(auto_micro_batch="off", grad_accum=4)).training.probes_micro_batch(
        one_gpu=True
    )
    forced = demo_dict(auto_micro_batch="on", grad_accum=1)
    forced["resources"]["gpus"] = 1
    assert parse_config(forced).training.probes_micro_batch(one_gpu=False)  # and the worker says why not


def test_configs_saved_with_a_true_or_false_keep_their_meaning() -> None:
    assert parse_config(demo_dict(auto_micro_batch=False)).training.auto_micro_batch == "off"
    on = demo_dict(auto_micro_batch=True)
    on["resources"]["gpus"] = 1
    assert parse_config(on).training.auto_micro_batch == "on"
    with pytest.raises(ConfigError) as err:
        parse_config(demo_dict(auto_micro_batch="sometimes"))
    assert "training.auto_micro_batch" in err.value.problems


def test_a_resumed_run_that_started_without_a_probe_keeps_its_split(tmp_path: Path) -> None:
    from contract.rundir import RunDir
    from worker.train.trainer import probe_micro_batch as _probe_micro_batch

    cfg = demo_dict(batch_size=4, grad_accum=4)
    cfg["resources"]["gpus"] = 1
    logs: list[str] = []
    plan = RunPlan(device="cuda")
    split = _probe_micro_batch(
        parse_config(cfg),
        RunDir(tmp_path),
        model=None,  # never reached: nothing is probed
        fused=None,
        device="cuda",
        dtype="bfloat16",
        report=lambda kind, payload: logs.append(payload["message"]),
        resuming=True,
        plan=plan,
    )
    assert (split.micro_batch, split.grad_accum) == (4, 4)
    assert logs == [
        "Auto micro-batch: this run started without a probe; keeping micro-batch 4 × 4 accumulation"
    ]
    assert plan.micro_batch is None  # nothing measured to keep
    assert plan.levers["micro_batch"].value == "4 × 4" and plan.levers["micro_batch"].source == "resumed"


@pytest.mark.slow  # trains or compiles a real model
def test_a_one_gpu_job_that_lands_on_cpu_trains_with_the_configured_split_and_says_why() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine the probe runs: see the GPU test below")
    cfg = demo_dict(auto_micro_batch=True, max_steps=4, eval_steps=0, save_steps=4, grad_accum=2)
    cfg["resources"]["gpus"] = 1
    finished = trained_run("auto-micro-batch-cpu", cfg)
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    warnings = [
        e["payload"]["message"] for e in finished.of_kind("log") if e["payload"]["level"] == "warning"
    ]
    assert any(
        "Auto micro-batch runs on one GPU only; on CPU the configured micro-batch 8 × 2 accumulation is kept"
        in w
        for w in warnings
    ), warnings
    plan = read_plan(finished.run_dir.plan)
    assert plan is not None and plan.micro_batch is None  # no probe ran, so none is kept for a resume
    assert plan.levers["micro_batch"].value == "8 × 2" and plan.levers["micro_batch"].source == "config"


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_on_a_gpu_the_probe_merges_micro_batches_that_fit() -> None:
    cfg = demo_dict(
        auto_micro_batch=True, batch_size=2, grad_accum=4, max_steps=6, eval_steps=0, save_steps=6
    )
    cfg["resources"]["gpus"] = 1
    finished = trained_run("auto-micro-batch-gpu", cfg)
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    plan = read_plan(finished.run_dir.plan)
    assert plan is not None and plan.micro_batch is not None
    split = split_from_dict(plan.micro_batch)
    assert plan.levers["micro_batch"].source == "probe"
    assert (split.micro_batch, split.grad_accum) == (8, 1), split
    assert split.tried[2] is not None and split.tried[8] is not None and split.tried[2] < split.tried[8]
    logs = [e["payload"]["message"] for e in finished.of_kind("log")]
    assert any(m.startswith("Auto micro-batch (") and "micro-batch 8 × 1" in m for m in logs), logs


@pytest.mark.slow  # trains or compiles a real model
def test_a_probe_pass_runs_the_training_loss_eagerly_even_with_compiled_layers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CUDA probe's forward + backward, run on CPU: gradients flow, and nothing is compiled for it."""
    import torch

    from contract.config import demo_config
    from worker.train.loading import load_for_training
    from worker.train.speed.compile import compile_checkpointed_layers
    from worker.train.speed.fused_loss import FusedLoss
    from worker.train.speed.microbatch import probe_pass, training_loss

    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    cfg = demo_config()
    cfg.training.torch_compile = "off"  # compiled below, with the CPU backend
    model = load_for_training(cfg, device="cpu").model
    model.train()
    compiler = compile_checkpointed_layers(model, backend="aot_eager")
    assert compiler is not None
    softcap = model.config.get_text_config().final_logit_softcapping
    loss_fn = training_loss(FusedLoss("chunked", softcap, "test"))
    probe_pass(model, loss_fn, rows=3, seq=32, dtype=torch.float32, gen=torch.Generator().manual_seed(0))
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert compiler.graphs == 0  # the probe ran eagerly
    model.zero_grad(set_to_none=True)
    loss_fn(
        model, {"input_ids": torch.randint(0, 100, (3, 32)), "labels": torch.randint(0, 100, (3, 32))}
    ).backward()
    assert compiler.graphs > 0  # while training compiles: the check above could fail
    torch._dynamo.reset()
