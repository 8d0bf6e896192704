"""Compiling the checkpointed decoder layers changes how a layer runs, not what it computes.

On CPU the layers are compiled with the aot_eager backend (no C compiler; the same aten ops as eager), so
the loss and every LoRA gradient must come out the same as without compilation, while the CPU activation
offload and, on Gemma 3n, KV sharing (a dict written by earlier layers, read by later ones) stay in the path.
"""

from __future__ import annotations

import functools
from collections import UserDict
from collections.abc import Iterator
from typing import Any

import pytest

from contract.config import demo_config
from worker.train.loading import load_for_training
from worker.train.speed import offload
from worker.train.speed.compile import LayerCompiler, compile_checkpointed_layers

RTOL, ATOL = 1e-5, 1e-7  # aot_eager runs the eager ops: measured bit-identical, kept tight


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """No compiled code carried between tests, and the cache limit LayerCompiler raises is put back."""
    import torch

    limit = torch._dynamo.config.cache_size_limit
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch._dynamo.config.cache_size_limit = limit


def _load(monkeypatch: pytest.MonkeyPatch, preset: str, *, checkpointing: bool = True) -> Any:
    """The preset, 4-bit nf4 with LoRA on CPU, offload forced on, nothing compiled or moved by the loader."""
    import torch

    monkeypatch.setattr(offload, "MIN_OFFLOAD_BYTES", 0)  # the tiny model's layer inputs are below the floor
    cfg = demo_config().model_copy(deep=True)
    cfg.model.name = preset
    cfg.training.gradient_checkpointing = checkpointing
    cfg.training.torch_compile = "off"  # the test compiles itself
    cfg.speed.offload_activations = "on"
    cfg.speed.host_tables = "off"
    cfg.speed.fused_loss = "off"
    assert cfg.quantization.method == "nf4"
    torch.manual_seed(0)
    model = load_for_training(cfg, device="cpu").model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # small non-zero B: every adapter gets a gradient through the loss
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    model.train()
    return model


def _batch() -> dict[str, Any]:
    import torch

    ids = torch.randint(10, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads


def _checkpoint_fns(model: Any) -> dict[str, Any]:
    return {
        name: module._gradient_checkpointing_func
        for name, module in model.named_modules()
        if getattr(module, "gradient_checkpointing", False)
        and getattr(module, "_gradient_checkpointing_func", None) is not None
    }


def _kv_lora(model: Any) -> dict[str, list[str]]:
    """Per decoder layer with its own k/v projections: the names of their LoRA parameters."""
    layers: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if "lora_" in name and (".self_attn.k_proj." in name or ".self_attn.v_proj." in name):
            layers.setdefault(name.split(".self_attn.")[0], []).append(name)
    return layers


@pytest.mark.slow  # trains or compiles a real model
@pytest.mark.parametrize("preset", ["preset:tiny-gemma3n", "preset:tiny-llama"])
def test_compiled_layers_give_the_eager_loss_and_gradients(
    preset: str, monkeypatch: pytest.MonkeyPatch, fresh_dynamo: None
) -> None:
    import torch

    model = _load(monkeypatch, preset)
    batch = _batch()
    fns = _checkpoint_fns(model)
    assert fns and all(getattr(f, "_tuneboard_offload", False) for f in fns.values())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    ref_loss, ref = _loss_and_grads(model, batch)
    assert ref.keys() == set(trainable)
    nonzero = [n for n, g in ref.items() if g.abs().sum() > 0]
    assert len(nonzero) >= 0.9 * len(trainable), sorted(set(trainable) - set(nonzero))

    compiler = compile_checkpointed_layers(model, backend="aot_eager")
    assert compiler is not None and compiler.backend == "aot_eager"
    assert all(f is not fns[name] for name, f in _checkpoint_fns(model).items())

    packed = 0
    real_pack = offload._pack

    def counting_pack(tensor: Any, min_bytes: int) -> Any:
        nonlocal packed
        out = real_pack(tensor, min_bytes)
        packed += isinstance(out, offload._Offloaded)
        return out

    monkeypatch.setattr(offload, "_pack", counting_pack)
    loss, grads = _loss_and_grads(model, batch)

    assert compiler.graphs > 0 and compiler.compile_s > 0  # the layers really went through torch.compile
    assert packed > 0  # ... with the offload hooks still around the checkpoint
    assert torch.allclose(loss, ref_loss, rtol=RTOL, atol=ATOL), (float(loss), float(ref_loss))
    assert grads.keys() == ref.keys()
    for name, want in ref.items():
        assert torch.allclose(grads[name], want, rtol=RTOL, atol=ATOL), (
            f"{name}: max |diff| {(grads[name] - want).abs().max().item():.3e}"
        )

    kv = _kv_lora(model)
    assert kv  # every preset adapts k_proj/v_proj
    for layer, names in kv.items():
        assert len(names) == 4, (layer, names)  # lora_A and lora_B of k_proj and v_proj
        for name in names:
            assert grads[name].abs().sum() > 0, f"{name} got no gradient through the compiled layer"

    # Same shapes again: the compiled graphs are reused, nothing recompiles.
    graphs, compile_s = compiler.graphs, compiler.compile_s
    again, _ = _loss_and_grads(model, batch)
    assert (compiler.graphs, compiler.compile_s) == (graphs, compile_s)
    assert torch.allclose(again, ref_loss, rtol=RTOL, atol=ATOL)


@pytest.mark.slow  # trains or compiles a real model
def test_gemma3n_kv_sharing_carries_gradient_into_the_earlier_layers_when_compiled(
    monkeypatch: pytest.MonkeyPatch, fresh_dynamo: None
) -> None:
    """The shared K/V reach the storing layers' k/v LoRA both eagerly and compiled.

    A run with the shared K/V detached shows how much of those gradients comes through the sharing; the
    compiled gradients must equal the eager ones (which include it), not the detached ones.
    """
    import torch
    from transformers.cache_utils import KVSharingDict

    model = _load(monkeypatch, "preset:tiny-gemma3n")
    batch = _batch()
    attns = {name: m for name, m in model.named_modules() if hasattr(m, "store_full_length_kv")}
    storing = {name.rsplit(".self_attn", 1)[0] for name, m in attns.items() if m.store_full_length_kv}
    shared = [name for name, m in attns.items() if m.is_kv_shared_layer]
    assert storing and shared  # the preset really shares K/V between layers

    _, ref = _loss_and_grads(model, batch)
    with monkeypatch.context() as mp:

        def detached(self: Any, key: str) -> Any:
            return tuple(t.detach() for t in UserDict.__getitem__(self, key))

        mp.setattr(KVSharingDict, "__getitem__", detached, raising=False)
        _, cut = _loss_and_grads(model, batch)

    kv = _kv_lora(model)
    assert set(kv) == storing  # KV-shared layers have no k/v projections of their own
    via_sharing = [n for layer in storing for n in kv[layer] if not torch.allclose(cut[n], ref[n])]
    assert len(via_sharing) == 4 * len(storing), via_sharing

    compiler = compile_checkpointed_layers(model, backend="aot_eager")
    assert compiler is not None
    _, grads = _loss_and_grads(model, batch)
    assert compiler.graphs > 0
    for layer in storing:
        for name in kv[layer]:
            assert grads[name].abs().sum() > 0, name
            assert torch.allclose(grads[name], ref[name], rtol=RTOL, atol=ATOL), name


def test_nothing_is_compiled_without_checkpointing_and_a_second_call_does_not_wrap_again(
    monkeypatch: pytest.MonkeyPatch, fresh_dynamo: None
) -> None:
    plain = _load(monkeypatch, "preset:tiny-llama", checkpointing=False)
    assert compile_checkpointed_layers(plain, backend="aot_eager") is None
    assert not any(getattr(m, "_gradient_checkpointing_func", None) for m in plain.modules())

    model = _load(monkeypatch, "preset:tiny-llama")
    first = compile_checkpointed_layers(model, backend="aot_eager")
    assert first is not None
    wrapped = _checkpoint_fns(model)
    layers = {name for name in wrapped if name.split(".")[-2:-1] == ["layers"]}
    assert len(layers) == 4  # every decoder layer (transformers also marks the model module itself)
    assert all(getattr(f, "_tuneboard_compiled", False) for f in wrapped.values())
    compile_checkpointed_layers(model, backend="aot_eager")
    assert _checkpoint_fns(model) == wrapped  # the very same functions: not wrapped a second time


def test_strided_arguments_reach_the_checkpoint_contiguous(fresh_dynamo: None) -> None:
    import torch

    received: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def fake_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
        received.append((function, args, kwargs))
        return function(*args)

    def layer(x: Any, y: Any, scale: float = 1.0) -> Any:
        return (x * y).sum(-1) * scale

    compiler = LayerCompiler(backend="aot_eager")
    run = compiler.wrap(fake_checkpoint)
    base = torch.randn(4, 3, 5)
    strided = base[:, 1, :]  # a slice like Gemma 3n's per-layer input
    dense = torch.randn(4, 5)
    assert not strided.is_contiguous()

    out = run(functools.partial(layer, scale=2.0), strided, dense, use_reentrant=False)

    function, args, kwargs = received[0]
    assert args[0].is_contiguous() and torch.equal(args[0], strided)
    assert args[1] is dense  # already contiguous: passed as is
    assert kwargs == {"use_reentrant": False}
    assert isinstance(function, functools.partial) and function.keywords == {"scale": 2.0}
    assert function.func is not layer  # the compiled form, rebuilt into a partial
    assert torch.allclose(out, layer(strided, dense, scale=2.0))
    assert compiler.graphs > 0 and compiler.compile_s > 0

    graphs = compiler.graphs
    run(functools.partial(layer, scale=2.0), strided, dense)
    assert compiler.graphs == graphs  # one compiled function per layer forward, reused
    assert received[1][0].func is function.func


@pytest.mark.slow  # trains or compiles a real model
def test_a_compiled_run_through_the_training_child_keeps_one_batch_shape_and_reports_compile_time() -> None:
    """The real child with torch_compile on: short last batches are skipped, compile time is reported."""
    from tests.worker.training_runs import demo_dict, new_run_dir, run_child

    # 230 training rows in the demo dataset: batches of 7 leave 6 over, which would be a new shape
    config = demo_dict(max_steps=36, batch_size=7, torch_compile="on", eval_steps=0, save_steps=36)
    config["speed"]["compile_backend"] = "aot_eager"  # no C compiler needed
    run = run_child(new_run_dir("compiled", config))
    assert run.returncode == 0, run.stderr[-2000:]
    (plan,) = run.of_kind("plan")
    levers = {lever["name"]: lever for lever in plan["payload"]["levers"]}
    assert levers["compile"]["value"] is True and levers["compile"]["source"] == "config"
    assert levers["compile_backend"]["value"] == "aot_eager"
    messages = [e["payload"]["message"] for e in run.of_kind("log")]
    assert any("Decoder layers are compiled" in m for m in messages)
    skipped = [m for m in messages if "training row(s) of each shuffled epoch are skipped" in m]
    assert skipped and "the last 6 training row(s)" in skipped[0]
    compiled = [m for m in messages if m.startswith("torch.compile:")]
    assert compiled, messages
    # 36 steps cross an epoch boundary (32 full batches per epoch); with the short batch dropped no step
    # brings a new shape, so the graphs are the first step's (one per layer variant of the tiny preset)
    graphs = int(compiled[0].split()[1])
    assert 0 < graphs <= 4
    losses = [loss for _, loss in run.losses()]
    assert len(losses) == 36 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_a_layer_that_cannot_be_compiled_runs_eagerly_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch, fresh_dynamo: None
) -> None:
    import torch

    def no_compiler(graph: Any, example_inputs: Any) -> Any:
        raise RuntimeError("this machine has no compiler")

    model = _load(monkeypatch, "preset:tiny-llama")
    batch = _batch()
    loss_before, grads_before = _loss_and_grads(model, batch)
    suppress = torch._dynamo.config.suppress_errors
    try:
        compiler = compile_checkpointed_layers(model, backend=no_compiler)
        assert compiler is not None
        loss_after, grads_after = _loss_and_grads(model, batch)
    finally:
        torch._dynamo.config.suppress_errors = suppress
    assert compiler.graphs == 0
    assert torch.equal(loss_after, loss_before)
    assert grads_before.keys() == grads_after.keys()
    assert all(torch.equal(grads_before[k], grads_after[k]) for k in grads_before)


def test_inductor_options_come_from_the_config_and_bad_ones_are_refused() -> None:
    from contract.config import ConfigError, parse_config
    from worker.train.speed.compile import compile_options

    assert compile_options(None) is None and compile_options("") is None
    assert compile_options('{"cpp_wrapper": true}') == {"cpp_wrapper": True}
    assert LayerCompiler(backend="inductor", options={"cpp_wrapper": True}).options == {"cpp_wrapper": True}
    # only inductor takes options
    assert LayerCompiler(backend="aot_eager", options={"cpp_wrapper": True}).options is None
    with pytest.raises(ValueError, match="not valid JSON"):
        compile_options("cpp_wrapper=1")
    with pytest.raises(ValueError, match="must be a JSON object"):
        compile_options("[1]")
    with pytest.raises(ConfigError) as err:  # the config refuses them before a job exists
        parse_config({"speed": {"compile_options": "[1]"}})
    assert "speed.compile_options" in err.value.problems
