"""The saved adapter, loaded with plain PEFT on the same quantized base, reproduces the worker's logits."""

from __future__ import annotations

import json

import pytest

from contract.protocol import ExitCode
from tests.worker.training_runs import FinishedRun, demo_run
from worker.train.finish import REFERENCE_LOGITS

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def run() -> FinishedRun:
    finished = demo_run()
    assert finished.returncode == ExitCode.SUCCEEDED, finished.stderr[-3000:]
    return finished


def _plain_peft_logits(
    run: FinishedRun, *, with_adapter: bool, repack_off: bool = True
) -> tuple[object, object]:
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    adapter = run.run_dir.adapter
    q = json.loads((adapter / "tuneboard_quantization.json").read_text(encoding="utf-8"))
    base = AutoModelForCausalLM.from_pretrained(
        q["base_model"],
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q["method"],
            bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=q["llm_int8_skip_modules"],
        ),
        dtype=torch.float32,
    )
    if repack_off:
        # On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights to a bf16 kernel on the first eval forward;
        # the worker turns that off (it breaks training), so the reference logits are the unrepacked ones.
        # With repacking on, this preset differs by ~0.06 at most: kernel rounding, not a different model.
        for module in base.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    model = PeftModel.from_pretrained(base, str(adapter)) if with_adapter else base
    model.eval()
    ref = load_file(str(adapter / REFERENCE_LOGITS))
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=torch.ones_like(ref["input_ids"])).logits
    return logits.float(), ref["logits"]


def test_plain_peft_reproduces_the_reference_logits(run: FinishedRun) -> None:
    import torch

    logits, reference = _plain_peft_logits(run, with_adapter=True)
    assert logits.shape == reference.shape
    # Same quantized weights and same adapter: equal up to kernel rounding.
    assert torch.allclose(logits, reference, atol=1e-3, rtol=1e-3), (logits - reference).abs().max()


def test_the_base_without_the_adapter_gives_different_logits(run: FinishedRun) -> None:

    logits, reference = _plain_peft_logits(run, with_adapter=False)
    # The check above can fail: training moved the logits far beyond the tolerance it uses.
    assert (logits - reference).abs().max() > 0.1
