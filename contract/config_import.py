"""Import a LLaMA-Factory or Axolotl LoRA/QLoRA training YAML as a Tuneboard JobConfig.

`import_config_text(text)` recognises the tool by its key names, maps every key it knows to our fields
(converting values where the meaning differs: Axolotl's `adapter: qlora` is quantization.method nf4,
LLaMA-Factory's `quantization_bit: 4` too), and lists every key it could not map, each with why. A mapped
value our schema refuses (a learning rate above 1) moves to the unmapped list with the schema's words,
and the rest of the config still converts. `tuneboard import-config FILE` and the new-job form's
"Paste a config" use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from contract.config import ConfigError, JobConfig, _safe_yaml, parse_config

AXOLOTL = "Axolotl"
LLAMA_FACTORY = "LLaMA-Factory"

# keys that only one of the tools uses: two or more of them name the tool
_TOOL_MARKERS = {
    AXOLOTL: {"base_model", "adapter", "micro_batch_size", "sequence_len", "datasets", "num_epochs",
              "lora_target_modules", "load_in_4bit", "sample_packing", "val_set_size", "lr_scheduler"},
    LLAMA_FACTORY: {"model_name_or_path", "stage", "finetuning_type", "quantization_bit", "lora_rank",
                    "lora_target", "cutoff_len", "template", "dataset", "val_size", "do_train"},
}  # fmt: skip


def _article(tool: str) -> str:
    return ("an " if tool[0] in "AEIOU" else "a ") + tool


class Unmapped(Exception):
    """A key whose value has no Tuneboard equivalent; the message says why."""


@dataclass
class ImportResult:
    """What an import produced: the config, and the account of every key."""

    tool: str
    config: JobConfig
    data: dict[str, Any]  # the Tuneboard config as written (only the fields the file set)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (their key, "our.field = value")
    implied: list[tuple[str, str]] = field(default_factory=list)  # (their key, why nothing needs setting)
    unmapped: list[tuple[str, str]] = field(default_factory=list)  # (their key, why it was not mapped)

    def yaml_text(self) -> str:
        """The converted config as YAML, with the unmapped keys as comments at the top."""
        head = [f"# converted from {_article(self.tool)} config by Tuneboard"]
        if self.unmapped:
            head.append("# not mapped:")
            head.extend(f"#   {key}: {why}" for key, why in self.unmapped)
        return "\n".join(head) + "\n" + yaml.safe_dump(self.data, sort_keys=False)

    def report_lines(self) -> list[str]:
        """The account in words, one key a line."""
        lines = [f"read as {_article(self.tool)} config: {len(self.mapped)} keys mapped, "
                 f"{len(self.implied)} need no setting, {len(self.unmapped)} not mapped"]  # fmt: skip
        lines += [f"  mapped      {key} -> {what}" for key, what in self.mapped]
        lines += [f"  no setting  {key}: {why}" for key, why in self.implied]
        lines += [f"  NOT MAPPED  {key}: {why}" for key, why in self.unmapped]
        return lines


def detect_tool(data: Any) -> str | None:
    """AXOLOTL, LLAMA_FACTORY, or None for anything else (our own format included)."""
    if not isinstance(data, dict):
        return None
    keys = set(data)
    scores = {tool: len(keys & markers) for tool, markers in _TOOL_MARKERS.items()}
    tool, score = max(scores.items(), key=lambda kv: kv[1])
    others = [s for t, s in scores.items() if t != tool]
    if score >= 2 and all(score > s for s in others):
        return tool
    return None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise Unmapped(f"expected true or false, got {value!r}")


def _names(value: Any) -> list[str]:
    """A module list given as a YAML list or a comma-separated string."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise Unmapped(f"expected module names, got {value!r}")


def _fraction(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise Unmapped(
        f"{value!r} is a row count; Tuneboard holds out a fraction (dataset.eval_fraction, 0 to 0.5)"
    )


_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


def _dataset_path(value: str, tool: str) -> str:
    if value.startswith(("preset:", "upload:")) or value.lower().endswith(_DATA_SUFFIXES) or "/" in value:
        return value
    if tool == LLAMA_FACTORY:
        raise Unmapped(
            f"{value!r} names an entry of LLaMA-Factory's dataset_info.json, not a file: upload the file "
            "and set dataset.source to it"
        )
    return value


def _axolotl_datasets(value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(d, dict) for d in value):
        raise Unmapped("expected a list of {path, type} entries")
    if len(value) > 1:
        raise Unmapped(f"{len(value)} datasets: a Tuneboard job trains on one file; merge them first")
    entry = value[0]
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise Unmapped("the entry has no path")
    out: list[tuple[str, Any]] = [("dataset.source", _dataset_path(path, AXOLOTL))]
    kind = entry.get("type")
    if isinstance(kind, str) and kind.startswith("chat_template"):
        out.append(("dataset.format", "messages"))
    elif kind == "completion":
        out.append(("dataset.format", "text"))
    return out


def _one(target: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], list[tuple[str, Any]]]:
    return lambda value: [(target, convert(value))]


def _choice(target: str, table: dict[Any, Any], what: str) -> Callable[[Any], list[tuple[str, Any]]]:
    def convert(value: Any) -> list[tuple[str, Any]]:
        key = value.lower() if isinstance(value, str) else value
        if key not in table:
            raise Unmapped(f"{value!r} has no Tuneboard equivalent; {what}")
        return [(target, table[key])] if table[key] is not None else []

    return convert


_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant"}
_OPTIMIZERS = {
    "adamw_torch": "adamw_torch", "adamw_torch_fused": "adamw_torch", "adamw_hf": "adamw_torch",
    "adamw_bnb_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "adamw_torch",
}  # fmt: skip
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32", "auto": "auto"}  # fmt: skip


def _precision(dtype: str) -> Callable[[Any], list[tuple[str, Any]]]:
    def convert(value: Any) -> list[tuple[str, Any]]:
        if value == "auto":
            return [("model.dtype", "auto")]
        return [("model.dtype", dtype)] if _bool(value) else []

    return convert


def _quant_flag(method: str) -> Callable[[Any], list[tuple[str, Any]]]:
    return lambda value: [("quantization.method", method)] if _bool(value) else []


def _lora_target(value: Any) -> list[tuple[str, Any]]:
    names = _names(value)
    return [("lora.target_modules", "auto" if names == ["all"] else names)]


def _flash(value: Any) -> list[tuple[str, Any]]:
    table = {
        "fa2": "flash_attention_2",
        "sdpa": "sdpa",
        "disabled": "eager",
        "eager": "eager",
        "auto": "auto",
    }
    if isinstance(value, bool):
        return [("model.attn_implementation", "flash_attention_2" if value else "auto")]
    return _choice("model.attn_implementation", table, "use auto, eager, sdpa or fa2")(value)


# key → converter returning [(our dotted field, value)]; shared names first, then each tool's own
_COMMON: dict[str, Callable[[Any], list[tuple[str, Any]]]] = {
    "learning_rate": _one("training.learning_rate", float),
    "gradient_accumulation_steps": _one("training.grad_accum"),
    "warmup_ratio": _one("training.warmup"),
    "max_steps": lambda v: [] if v in (-1, 0) else [("training.max_steps", v)],
    "weight_decay": _one("training.weight_decay"),
    "max_grad_norm": _one("training.max_grad_norm"),
    "seed": _one("training.seed"),
    "logging_steps": _one("training.logging_steps"),
    "eval_steps": _one("training.eval_steps"),
    "save_steps": _one("training.save_steps"),
    "save_total_limit": _one("training.save_total_limit"),
    "gradient_checkpointing": _one("training.gradient_checkpointing", _bool),
    "lora_alpha": _one("lora.alpha"),
    "lora_dropout": _one("lora.dropout"),
    "trust_remote_code": _one("model.trust_remote_code", _bool),
    "bf16": _precision("bfloat16"),
    "fp16": _precision("float16"),
    "torch_dtype": _choice("model.dtype", _DTYPES, "use auto, bfloat16, float16 or float32"),
    "lr_scheduler_type": _choice("training.scheduler", _SCHEDULERS, "use cosine, linear or constant"),
    "optim": _choice("training.optimizer", _OPTIMIZERS, "Tuneboard offers AdamW (fused, 8-bit or paged)"),
    "per_device_train_batch_size": _one("training.batch_size"),
    "num_train_epochs": lambda v: [("training.epochs", float(v)), ("training.max_steps", None)],
    "packing": _one("training.packing", _bool),
}
_AXOLOTL: dict[str, Callable[[Any], list[tuple[str, Any]]]] = {
    "base_model": _one("model.name"),
    "revision_of_model": _one("model.revision"),
    "adapter": _choice(
        "quantization.method", {"qlora": "nf4", "lora": None}, "Tuneboard trains LoRA and QLoRA adapters"
    ),
    "load_in_4bit": _quant_flag("nf4"),
    "load_in_8bit": _quant_flag("int8"),
    "bnb_4bit_quant_type": _choice("quantization.method", {"nf4": "nf4", "fp4": "fp4"}, "use nf4 or fp4"),
    "bnb_4bit_use_double_quant": _one("quantization.double_quant", _bool),
    "lora_r": _one("lora.r"),
    "lora_target_modules": _one("lora.target_modules", _names),
    "lora_target_linear": lambda v: [("lora.target_modules", "auto")] if _bool(v) else [],
    "lora_modules_to_save": _one("lora.modules_to_save", _names),
    "sequence_len": _one("training.max_seq_len"),
    "micro_batch_size": _one("training.batch_size"),
    "num_epochs": lambda v: [("training.epochs", float(v)), ("training.max_steps", None)],
    "lr_scheduler": _choice("training.scheduler", _SCHEDULERS, "use cosine, linear or constant"),
    "optimizer": _choice("training.optimizer", _OPTIMIZERS, "Tuneboard offers AdamW (fused, 8-bit or paged)"),
    "datasets": _axolotl_datasets,
    "val_set_size": _one("dataset.eval_fraction", _fraction),
    "sample_packing": _one("training.packing", _bool),
    "train_on_inputs": lambda v: [("dataset.assistant_only_loss", not _bool(v))],
    "flash_attention": _flash,
    "sdp_attention": lambda v: [("model.attn_implementation", "sdpa")] if _bool(v) else [],
}
_LLAMA_FACTORY: dict[str, Callable[[Any], list[tuple[str, Any]]]] = {
    "model_name_or_path": _one("model.name"),
    "model_revision": _one("model.revision"),
    "quantization_bit": _choice(
        "quantization.method", {4: "nf4", 8: "int8"}, "Tuneboard quantizes to 4 or 8 bits"
    ),
    "quantization_type": _choice("quantization.method", {"nf4": "nf4", "fp4": "fp4"}, "use nf4 or fp4"),
    "double_quantization": _one("quantization.double_quant", _bool),
    "lora_rank": _one("lora.r"),
    "lora_target": _lora_target,
    "additional_target": _one("lora.modules_to_save", _names),
    "cutoff_len": _one("training.max_seq_len"),
    "dataset": lambda v: [("dataset.source", _dataset_path(str(v), LLAMA_FACTORY))],
    "val_size": _one("dataset.eval_fraction", _fraction),
    "max_samples": _one("dataset.max_rows"),
    "flash_attn": _flash,
    "neat_packing": _one("training.packing", _bool),
}

# keys whose meaning Tuneboard already has, given the value that means it
_IMPLIED: dict[str, tuple[tuple[Any, ...], str]] = {
    "stage": (("sft",), "Tuneboard does supervised fine-tuning"),
    "finetuning_type": (("lora",), "Tuneboard trains a LoRA adapter"),
    "do_train": ((True,), "a job always trains"),
    "model_type": ((), "the architecture comes from the model's own config"),
    "tokenizer_type": ((), "the tokenizer comes with the model"),
    "template": ((), "the model's own chat template formats the conversations"),
    "chat_template": ((), "the model's own chat template formats the conversations"),
    "strict": ((), "Tuneboard always refuses unknown keys"),
    "plot_loss": ((), "the job page charts the loss"),
    "overwrite_output_dir": ((), "each job has its own run directory"),
    "overwrite_cache": ((), "Tuneboard keeps no preprocessing cache"),
    "dataset_prepared_path": ((), "Tuneboard keeps no preprocessing cache"),
    "pad_to_sequence_len": ((), "batches are padded to their longest row"),
    "tf32": ((), "Tuneboard picks the matmul precision for the device"),
    "logging_first_step": ((), "the first step is always reported"),
    "report_to": (("none", None), "the dashboard records the metrics"),
}
# keys that mean something Tuneboard decides itself or does not offer, with why
_WHY_NOT: dict[str, str] = {
    "output_dir": "Tuneboard chooses the run directory (tuneboard train --run-dir sets it)",
    "resume_from_checkpoint": "resume a Tuneboard run with tuneboard train --resume --run-dir DIR",
    "deepspeed": "Tuneboard spreads a run over GPUs itself (resources.gpus)",
    "fsdp": "Tuneboard spreads a run over GPUs itself (resources.gpus)",
    "fsdp_config": "Tuneboard spreads a run over GPUs itself (resources.gpus)",
    "wandb_project": "set report_to: [wandb] and tracking.project (docs/trackers.md)",
    "wandb_entity": "set WANDB_ENTITY in the worker's environment (docs/trackers.md)",
    "wandb_name": "use the job's name",
    "run_name": "use the job's name",
    "special_tokens": "the tokenizer's own special tokens are used",
    "preprocessing_num_workers": "Tuneboard chooses the preprocessing workers",
    "dataloader_num_workers": "Tuneboard chooses the data loader workers",
    "ddp_timeout": "Tuneboard sets the distributed timeouts",
    "evals_per_epoch": "set training.eval_steps (evaluate every N steps)",
    "saves_per_epoch": "set training.save_steps (checkpoint every N steps)",
    "eval_strategy": "set training.eval_steps (0: only at the end)",
    "save_strategy": "set training.save_steps",
    "warmup_steps": "Tuneboard warms up by a fraction of the steps: set training.warmup",
    "per_device_eval_batch_size": "evaluation uses training.batch_size",
    "eval_batch_size": "evaluation uses training.batch_size",
    "dataset_dir": "give the file itself as dataset.source",
    "hub_model_id": "download the adapter from the job page or with tuneboard download",
    "push_to_hub": "download the adapter from the job page or with tuneboard download",
}


def _account(key: str, value: Any, tool: str, converters: dict[str, Any]) -> tuple[str, Any]:
    """("mapped", [(field, value)]) | ("implied", why) | ("unmapped", why) for one key."""
    if key in converters:
        try:
            return "mapped", converters[key](value)
        except Unmapped as exc:
            return "unmapped", str(exc)
        except (TypeError, ValueError):
            return "unmapped", f"cannot read {value!r}"
    if key in _IMPLIED:
        values, why = _IMPLIED[key]
        if not values or value in values:
            return "implied", why
        return "unmapped", f"{value!r} is not supported: {why}"
    if key in _WHY_NOT:
        return "unmapped", _WHY_NOT[key]
    return "unmapped", f"no {tool} key of this name is known to Tuneboard"


def _put(data: dict[str, Any], path: str, value: Any) -> None:
    section, _, name = path.rpartition(".")
    node = data.setdefault(section, {}) if section else data
    node[name] = value


def _drop(data: dict[str, Any], path: str) -> None:
    section, _, name = path.rpartition(".")
    node = data.get(section, {}) if section else data
    node.pop(name, None)
    if section and not data.get(section):
        data.pop(section, None)


def import_config(source: dict[str, Any], tool: str | None = None) -> ImportResult:
    """Convert a decoded LLaMA-Factory or Axolotl config; raise ConfigError when it is neither."""
    tool = tool or detect_tool(source)
    if tool is None:
        raise ConfigError(
            {
                "": "this is not a LLaMA-Factory or Axolotl training config (none of their key names such as "
                "base_model, adapter, model_name_or_path or finetuning_type were found)"
            }  # fmt: skip
        )
    converters = {**_COMMON, **(_AXOLOTL if tool == AXOLOTL else _LLAMA_FACTORY)}
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}  # our field → their key (to move a refused value to the unmapped list)
    result = ImportResult(tool, JobConfig.model_validate({}), data)
    for key, value in source.items():
        kind, detail = _account(str(key), value, tool, converters)
        if kind == "implied":
            result.implied.append((str(key), detail))
        elif kind == "unmapped":
            result.unmapped.append((str(key), detail))
        else:
            for path, converted in detail:
                if path == "training.max_steps" and converted is None and "max_steps" in source:
                    continue  # both given: their max_steps wins, as in the Trainer
                _put(data, path, converted)
                origin[path] = str(key)
            shown = ", ".join(f"{p} = {v!r}" for p, v in detail) or "nothing (the default already)"
            result.mapped.append((str(key), shown))
    for _ in range(len(origin) + 1):  # each round drops the refused values, then validates again
        try:
            result.config = parse_config(data)
            break
        except ConfigError as exc:
            refused = {path: why for path, why in exc.problems.items() if path in origin}
            if not refused:
                raise
            for path, why in refused.items():
                key = origin.pop(path)
                _drop(data, path)
                result.mapped = [(k, w) for k, w in result.mapped if k != key]
                result.unmapped.append((key, f"maps to {path}, which refuses it: {why}"))
    return result


def looks_foreign(text: str) -> bool:
    """True when `text` parses as a mapping that reads as a LLaMA-Factory or Axolotl config."""
    try:
        data = _safe_yaml(text) if text.strip() else None
    except (ValueError, yaml.YAMLError, RecursionError):
        return False
    return detect_tool(data) is not None


def import_config_text(text: str, *, filename: str = "config.yaml") -> ImportResult:
    """Parse YAML (or JSON) text and convert it; ConfigError when it cannot be read or is neither tool's."""
    try:
        data = _safe_yaml(text) if text.strip() else None
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError({"": f"cannot parse {filename}: {exc}"}) from None
    except RecursionError:
        raise ConfigError({"": f"cannot parse {filename}: it is nested too deeply"}) from None
    if not isinstance(data, dict):
        raise ConfigError({"": f"{filename} is not a mapping of keys to values"})
    return import_config(data)
