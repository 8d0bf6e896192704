"""The end of a successful run: the adapter folder, with everything needed to trust and reuse it.

RUN_DIR/adapter/ receives the LoRA weights, the tokenizer, reference logits for a fixed input (so anyone
can check the adapter reloads to the same model), the config, the run plan, the quantization it was
trained against and the model card; then one ARTIFACT event. Only rank 0 writes it.

Also here: a run relaunched after its last checkpoint already holds every step (`trained_out`) skips the
Trainer's loop and finishes from that checkpoint (`load_final_checkpoint`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from contract.config import JobConfig, config_to_dict
from contract.plan import RunPlan, write_plan
from contract.protocol import EventKind, ExitCode
from contract.rundir import RunDir
from worker.train.distributed import rank_info
from worker.train.outcome import Outcome
from worker.train.reporter import Reporter

REFERENCE_LOGITS = "reference_logits.safetensors"
ADAPTER_PLAN = "tuneboard_plan.json"  # the run plan, copied next to the adapter it describes
CARD_METRICS = ("loss", "eval_loss", "grad_norm", "epoch")


def trained_out(ckpt: Path | None, cfg: JobConfig) -> bool:
    """Whether `ckpt` already holds training.max_steps steps (a run stopped after its last checkpoint)."""
    if ckpt is None or cfg.training.max_steps is None:
        return False  # an epoch-based run ends on an epoch boundary, where the Trainer's loop is empty
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    return state.global_step >= cfg.training.max_steps


def load_final_checkpoint(trainer: Any, ckpt: Path) -> None:
    """Load the checkpoint's adapter weights into the model and its state into the trainer; no training."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_peft_weights(str(ckpt), device=str(trainer.args.device)))
    trainer.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))


def finish_run(
    cfg: JobConfig,
    run_dir: RunDir,
    reporter: Reporter,
    trainer: Any,
    loaded: Any,
    prepared: Any,
    pre: Any,
    last_metrics: dict[str, float],
    seconds: float,
    device: str,
    plan: RunPlan | None = None,
) -> Outcome:
    """Save the adapter, tokenizer, reference logits, config, plan and model card; emit the ARTIFACT event."""
    if not rank_info().is_main:
        return Outcome(ExitCode.SUCCEEDED, "done; rank 0 saves the adapter")
    from worker.train.model_card import write_model_card

    out = run_dir.adapter
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    example = (prepared.eval or prepared.train)[0]
    write_reference_logits(model, example["input_ids"], device, out / REFERENCE_LOGITS)

    (out / "tuneboard_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2), encoding="utf-8")
    if plan is not None:  # how these weights were computed travels with them
        write_plan(out / ADAPTER_PLAN, plan)
    (out / "tuneboard_quantization.json").write_text(
        json.dumps(
            {
                "method": cfg.quantization.method,
                "double_quant": cfg.quantization.double_quant,
                "llm_int8_skip_modules": list(loaded.kept_in_full_precision),
                "dtype": loaded.dtype,
                "base_model": loaded.source,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    metrics: dict[str, Any] = {k: v for k, v in last_metrics.items() if k in CARD_METRICS}
    metrics["steps"] = trainer.state.global_step
    metrics["train_seconds"] = round(seconds, 1)
    write_model_card(
        out / "README.md",
        cfg=cfg,
        base_model=loaded.source,
        dataset_fingerprint=prepared.fingerprint,
        dataset_format=prepared.format,
        num_train_rows=len(prepared.train_rows),
        num_eval_rows=len(prepared.eval_rows),
        metrics=metrics,
        preflight_notes=list(dict.fromkeys([pre.summary, *pre.notes, *loaded.notes])),
        kept_in_full_precision=loaded.kept_in_full_precision,
        command="tuneboard train tuneboard_config.json",
    )
    reporter.emit(EventKind.ARTIFACT, trainer.state.global_step, {"name": "adapter", "path": "adapter"})
    return Outcome(
        ExitCode.SUCCEEDED,
        f"trained {trainer.state.global_step} steps in {seconds:.0f} s; adapter saved in adapter/",
        {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}},
    )


def write_reference_logits(model: Any, input_ids: list[int], device: str, path: Path) -> None:
    """The model's logits for `input_ids`, saved with them (the model is left in eval mode)."""
    import torch
    from safetensors.torch import save_file

    ids = torch.tensor([input_ids], device=device)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().cpu()
    save_file({"input_ids": ids.cpu(), "logits": logits.contiguous()}, str(path))
