"""Config habits from elsewhere: shorthand sections and "did you mean" for other tools' key names.

`expand_shorthand` lets `model: <id>` and `dataset: <path>` stand for `model: {name: <id>}` and
`dataset: {source: <path>}`. `unknown_key_message` turns pydantic's "extra key" into a sentence that names
the Tuneboard field meant, when the key is a Hugging Face TrainingArguments, TRL, PEFT, LLaMA-Factory or
Axolotl name, one of our own fields in the wrong section, or a near miss of one.

Pure python: contract/config.py imports this module, so it must not import contract.config.
"""

from __future__ import annotations

import difflib
from typing import Any

# key name → (Tuneboard field, where the name comes from, how the value changes; "" when it is the same)
FOREIGN_KEYS: dict[str, tuple[str, str, str]] = {
    # Hugging Face TrainingArguments (and TRL's SFTConfig)
    "learning_rate": ("training.learning_rate", "Hugging Face TrainingArguments", ""),
    "gradient_accumulation_steps": ("training.grad_accum", "Hugging Face TrainingArguments", ""),
    "warmup_ratio": ("training.warmup", "Hugging Face TrainingArguments", ""),
    "num_train_epochs": ("training.epochs", "Hugging Face TrainingArguments", ""),
    "per_device_train_batch_size": ("training.batch_size", "Hugging Face TrainingArguments", ""),
    "lr_scheduler_type": ("training.scheduler", "Hugging Face TrainingArguments", ""),
    "optim": ("training.optimizer", "Hugging Face TrainingArguments", ""),
    "max_seq_length": ("training.max_seq_len", "TRL", ""),
    "max_length": ("training.max_seq_len", "TRL", ""),
    "completion_only_loss": ("dataset.assistant_only_loss", "TRL", ""),
    "assistant_only_loss": ("dataset.assistant_only_loss", "TRL", ""),
    "torch_dtype": ("model.dtype", "transformers", ""),
    "bf16": ("model.dtype", "Hugging Face TrainingArguments", "true means model.dtype: bfloat16"),
    "fp16": ("model.dtype", "Hugging Face TrainingArguments", "true means model.dtype: float16"),
    # PEFT's LoraConfig and the lora_* spellings most tools share
    "lora_r": ("lora.r", "Axolotl / PEFT", ""),
    "lora_alpha": ("lora.alpha", "Axolotl / LLaMA-Factory / PEFT", ""),
    "lora_dropout": ("lora.dropout", "Axolotl / LLaMA-Factory / PEFT", ""),
    "lora_target_modules": ("lora.target_modules", "Axolotl", ""),
    "lora_modules_to_save": ("lora.modules_to_save", "Axolotl", ""),
    # Axolotl
    "base_model": ("model.name", "Axolotl", ""),
    "sequence_len": ("training.max_seq_len", "Axolotl", ""),
    "micro_batch_size": ("training.batch_size", "Axolotl", ""),
    "num_epochs": ("training.epochs", "Axolotl", ""),
    "lr_scheduler": ("training.scheduler", "Axolotl", ""),
    "load_in_4bit": ("quantization.method", "Axolotl", "true means quantization.method: nf4"),
    "load_in_8bit": ("quantization.method", "Axolotl", "true means quantization.method: int8"),
    "adapter": ("quantization.method", "Axolotl", "qlora means nf4, lora means none"),
    "bnb_4bit_quant_type": ("quantization.method", "bitsandbytes", ""),
    "bnb_4bit_use_double_quant": ("quantization.double_quant", "bitsandbytes", ""),
    "datasets": ("dataset.source", "Axolotl", "one file: the first entry's path"),
    "val_set_size": ("dataset.eval_fraction", "Axolotl", "a fraction between 0 and 0.5"),
    "sample_packing": ("training.packing", "Axolotl", ""),
    "train_on_inputs": ("dataset.assistant_only_loss", "Axolotl", "the opposite: true means false"),
    "flash_attention": ("model.attn_implementation", "Axolotl", "true means flash_attention_2"),
    # LLaMA-Factory
    "model_name_or_path": ("model.name", "LLaMA-Factory / transformers", ""),
    "model_revision": ("model.revision", "LLaMA-Factory", ""),
    "quantization_bit": ("quantization.method", "LLaMA-Factory", "4 means nf4, 8 means int8"),
    "quantization_type": ("quantization.method", "LLaMA-Factory", ""),
    "double_quantization": ("quantization.double_quant", "LLaMA-Factory", ""),
    "lora_rank": ("lora.r", "LLaMA-Factory", ""),
    "lora_target": ("lora.target_modules", "LLaMA-Factory", "a list; all means auto"),
    "additional_target": ("lora.modules_to_save", "LLaMA-Factory", ""),
    "cutoff_len": ("training.max_seq_len", "LLaMA-Factory", ""),
    "val_size": ("dataset.eval_fraction", "LLaMA-Factory", "a fraction between 0 and 0.5"),
    "max_samples": ("dataset.max_rows", "LLaMA-Factory", ""),
    "flash_attn": ("model.attn_implementation", "LLaMA-Factory", "fa2 means flash_attention_2"),
    "neat_packing": ("training.packing", "LLaMA-Factory", ""),
    "packing": ("training.packing", "LLaMA-Factory / TRL", ""),
}

# sections whose string value stands for their one essential field
SHORTHAND_FIELDS = {"model": "name", "dataset": "source"}


def expand_shorthand(data: Any) -> Any:
    """`model: <id>` / `dataset: <path>` as the sections they stand for; anything else unchanged."""
    if not isinstance(data, dict):
        return data
    if not any(isinstance(data.get(section), str) for section in SHORTHAND_FIELDS):
        return data
    expanded = dict(data)
    for section, field in SHORTHAND_FIELDS.items():
        if isinstance(expanded.get(section), str):
            expanded[section] = {field: expanded[section]}
    return expanded


def suggest_field(path: str, known_paths: list[str]) -> tuple[str, str] | None:
    """(the Tuneboard field `path` most likely means, why) for an unknown dotted key, or None."""
    key = path.rsplit(".", 1)[-1]
    section = path.rsplit(".", 1)[0] if "." in path else ""
    if key in FOREIGN_KEYS:
        target, origin, note = FOREIGN_KEYS[key]
        why = f"{key} is the {origin} name" + (f"; {note}" if note else "")
        return target, why
    # one of our own fields, written in another section or at the top level
    same_name = [p for p in known_paths if p.rsplit(".", 1)[-1] == key and p != path]
    if len(same_name) == 1:
        where = f"the {section} section" if section else "the top level"
        return same_name[0], f"{key} belongs in the {same_name[0].split('.')[0]} section, not {where}"
    # a near miss: compare within the same section first, then everywhere
    siblings = [
        p.rsplit(".", 1)[-1] for p in known_paths if (p.rsplit(".", 1)[0] if "." in p else "") == section
    ]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.75)
    if close:
        return (f"{section}.{close[0]}" if section else close[0]), "a close spelling"
    leaves = {p.rsplit(".", 1)[-1]: p for p in known_paths}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.8)
    if close:
        return leaves[close[0]], "a close spelling"
    return None


def unknown_key_message(path: str, known_paths: list[str]) -> str:
    """The sentence for an unknown key at `path`, with a "did you mean" where one fits."""
    base = "unknown key"
    hint = suggest_field(path, known_paths)
    if hint is None:
        return f"{base}; check the spelling (see the config reference for allowed keys)"
    target, why = hint
    key = path.rsplit(".", 1)[-1]
    origin = FOREIGN_KEYS[key][1] if key in FOREIGN_KEYS else ""
    tip = (
        "; `tuneboard import-config FILE` converts a whole Axolotl or LLaMA-Factory file"
        if "Axolotl" in origin or "LLaMA-Factory" in origin
        else ""
    )
    return f"{base}; did you mean {target}? ({why}){tip}"
