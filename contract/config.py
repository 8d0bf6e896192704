"""THE job config schema: one pydantic model shared by the web form, the REST API, the CLI and the worker.

No torch import here (the app imports this module). YAML and JSON load through `load_config_text`.
Unknown keys and impossible values raise `ConfigError`, whose `problems` map a dotted field path
("training.learning_rate") to a sentence that says what is allowed.

It is one thing at ~570 lines on purpose: every section of the schema, its validators and the readers of
stored rows are read together whenever a field is added, and the generated reference mirrors this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.catalog import PRESET_DATASETS, PRESET_MODELS, PRESET_PREFIX, model_info
from contract.config_hints import expand_shorthand, unknown_key_message
from contract.preference import (
    Method,
    MethodFieldError,
    PreferenceConfig,
    check_init_adapter,
    check_method_fields,
)
from contract.trackers import TrackerName, TrackingConfig, check_report_to

MAX_STRING = 4096


# Up to this many trainable parameters, "auto" picks PyTorch's fused AdamW on a GPU: its fp32 moments
# (8 bytes a parameter, 256 MB here) cost little, and it updates every tensor in a few launches where the
# 8-bit optimizers launch per tensor (~45 ms of host time a step for Gemma 3n E2B's 420 LoRA tensors on an
# H200; bench/README.md).
FUSED_ADAMW_MAX_PARAMS = 32_000_000


def resolve_optimizer(setting: str, on_gpu: bool, trainable_params: int) -> str:
    """The optimizer `training.optimizer` = `setting` means for a run (resolves "auto")."""
    if setting == "auto":
        if not on_gpu:
            return "adamw_8bit"
        return "adamw_torch" if trainable_params <= FUSED_ADAMW_MAX_PARAMS else "paged_adamw_8bit"
    if setting == "paged_adamw_8bit" and not on_gpu:
        return "adamw_8bit"  # paging needs CUDA unified memory; on CPU it would fall back with a warning
    return setting


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, str_max_length=MAX_STRING)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL, and no name, path or prompt needs one
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in items):
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


class ModelConfig(_Strict):
    """Which base model to fine-tune."""

    name: str = Field(
        "preset:tiny-gemma3n",
        min_length=1,
        description="Hub id (e.g. google/gemma-3n-E2B-it), a local directory, or preset:<name>.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto lets the architecture recipe choose."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Dtype of the non-quantized weights and compute; auto: bf16 on GPU, fp32 on CPU."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub repository.")

    @field_validator("name")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value.startswith(PRESET_PREFIX) and value[len(PRESET_PREFIX) :] not in PRESET_MODELS:
            known = ", ".join(PRESET_PREFIX + n for n in PRESET_MODELS)
            raise ValueError(f"unknown preset {value!r}; available presets: {known}")
        return value


COLUMN_ROLES = ("system", "user", "assistant", "tool")


class ColumnsConfig(_Strict):
    """Which columns of a dataset hold what, for layouts Tuneboard does not detect by itself."""

    messages: str | None = Field(None, description="Column holding the conversation (a list of turns).")
    prompt: str | None = Field(None, description="Column holding the prompt (or instruction).")
    input: str | None = Field(
        None, description="Column appended to the prompt on a new line (alpaca 'input')."
    )
    response: str | None = Field(None, description="Column holding the answer to learn.")
    text: str | None = Field(None, description="Column holding plain text (continued pretraining).")
    system: str | None = Field(None, description="Column holding a system prompt.")
    history: str | None = Field(None, description="Column holding earlier [prompt, answer] pairs.")
    tools: str | None = Field(None, description="Column holding the tool (function) definitions.")
    role_key: str = Field("role", min_length=1, description="Key of a turn's role inside the conversation.")
    content_key: str = Field(
        "content", min_length=1, description="Key of a turn's text inside the conversation."
    )
    roles: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Role names of the file mapped to system, user, assistant or tool (e.g. human: user).",
    )

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: dict[str, str]) -> dict[str, str]:
        for theirs, ours in value.items():
            if ours not in COLUMN_ROLES:
                raise ValueError(
                    f"role {theirs!r} is mapped to {ours!r}; map each role to one of "
                    f"{', '.join(COLUMN_ROLES)}"
                )
        return value

    @model_validator(mode="after")
    def _one_layout(self) -> ColumnsConfig:
        main = [n for n in ("messages", "prompt", "text") if getattr(self, n)]
        if len(main) != 1:
            raise ValueError(
                "name exactly one of messages (a conversation column), prompt (with response) or text; "
                + (f"got {', '.join(main)}" if main else "got none")
            )
        if self.prompt and not self.response:
            raise ValueError("response: name the column holding the answers (it goes with prompt)")
        if self.response and not self.prompt and not self.messages:
            raise ValueError("prompt: name the column holding the prompts (it goes with response)")
        if self.text and any(getattr(self, n) for n in ("response", "input", "system", "history", "tools")):
            raise ValueError("text: a text column is used alone; leave out the chat columns")
        return self


class DatasetConfig(_Strict):
    """Where the training examples come from and how they are formatted."""

    source: str = Field(
        "preset:reverse-letters",
        min_length=1,
        description="A JSONL/CSV/Parquet path, an uploaded dataset (upload:<id>), or preset:<name>.",
    )
    format: Literal["auto", "messages", "prompt_completion", "text"] = Field(
        "auto", description="Column layout; auto detects messages, prompt/completion or text columns."
    )
    eval_fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of rows held out for evaluation.")
    max_rows: int | None = Field(None, ge=1, le=100_000_000, description="Use at most this many rows.")
    assistant_only_loss: bool = Field(
        True, description="Compute the loss on assistant / completion tokens only."
    )
    num_rows: int = Field(
        256, ge=8, le=1_000_000, description="Rows to generate for a preset dataset (ignored otherwise)."
    )
    columns: ColumnsConfig | None = Field(
        None, description="Which columns hold what, for layouts not detected by themselves (see README)."
    )

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_from_text(cls, value: Any) -> Any:
        # the form sends text: a mapping as JSON/YAML, or a LLaMA-Factory dataset_info.json entry
        if not isinstance(value, str):
            return value
        if value.strip() in ("", "None", "null"):
            return None
        from contract.datasets import DatasetError
        from contract.datasets.mapping import columns_from_text

        try:
            return columns_from_text(value)
        except DatasetError as exc:
            raise ValueError(str(exc).removeprefix("dataset.columns: ")) from None

    @field_validator("source")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value.startswith(PRESET_PREFIX) and value[len(PRESET_PREFIX) :] not in PRESET_DATASETS:
            known = ", ".join(PRESET_PREFIX + n for n in PRESET_DATASETS)
            raise ValueError(f"unknown preset dataset {value!r}; available: {known}")
        return value


class QuantizationConfig(_Strict):
    """How the frozen base weights are stored."""

    method: Literal["nf4", "fp4", "int8", "none"] = Field(
        "nf4", description="nf4/fp4: 4-bit QLoRA; int8: 8-bit; none: plain LoRA on bf16/fp32 weights."
    )
    double_quant: bool = Field(True, description="Quantize the 4-bit scales too (saves ~0.4 bit/param).")
    keep_in_full_precision: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Extra module name patterns to keep un-quantized, on top of the recipe's own.",
    )


class LoraConfig(_Strict):
    """The low-rank adapter."""

    r: int = Field(16, ge=1, le=1024, description="Adapter rank (1 to 1024).")
    alpha: float = Field(32.0, gt=0, le=100_000, description="Scaling numerator; effective scale alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input (0 to <1).")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="Module names to adapt; auto: the recipe's language-model projections.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list, max_length=64, description="Modules trained in full and saved with the adapter."
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: Literal["auto"] | list[str]) -> Literal["auto"] | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError('give at least one module name, or "auto"')
            if len(value) > 256:
                raise ValueError("at most 256 module names")
        return value


class TrainingConfig(_Strict):
    """The optimisation loop."""

    max_steps: int | None = Field(60, ge=1, le=10_000_000, description="Optimizer steps; or set epochs.")
    epochs: float | None = Field(
        None, gt=0, le=10_000, description="Passes over the data (when max_steps is empty)."
    )
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (0 < lr ≤ 1).")
    batch_size: int = Field(4, ge=1, le=4096, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(
        512, ge=16, le=1_048_576, description="Examples are truncated to this many tokens."
    )
    optimizer: Literal["auto", "paged_adamw_8bit", "adamw_8bit", "adamw_torch"] = Field(
        "auto",
        description="auto: on GPU, PyTorch's fused AdamW when its fp32 state is small (up to 32 M trainable "
        "parameters, 256 MB), else paged 8-bit AdamW; 8-bit AdamW on CPU.",
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    warmup: float = Field(
        0.05, ge=0.0, le=0.5, description="Fraction of the steps spent warming up (0 to 0.5)."
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Gradient clipping threshold.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Random seed for data order and adapter init.")
    logging_steps: int = Field(1, ge=1, le=100_000, description="Report metrics every N steps.")
    eval_steps: int = Field(
        20, ge=0, le=10_000_000, description="Evaluate every N steps (0: only at the end)."
    )
    save_steps: int = Field(20, ge=1, le=10_000_000, description="Checkpoint every N steps.")
    save_total_limit: int = Field(3, ge=1, le=1000, description="Keep the last K complete checkpoints.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward to save memory."
    )
    packing: bool = Field(
        False,
        description="Pack short examples into rows of up to max_seq_len tokens, without padding between "
        "them; each example still attends only to itself. More examples per step, so fewer steps an epoch.",
    )
    auto_micro_batch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Split batch_size × grad_accum into the largest micro-batch that fits in GPU memory, "
        "measured by a few passes before training (4 × 4 may become 16 × 1): the same rows per optimizer "
        "step, run faster. auto: on one GPU when grad_accum is above 1; on: also with grad_accum 1, where "
        "it can only lower the micro-batch to fit.",
    )
    torch_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Compile the decoder layers with torch.compile (needs gradient_checkpointing). auto: "
        "on one GPU when the run has at least 200 optimizer steps or is set by epochs — compiling takes "
        "minutes, then each step is faster.",
    )
    sample_prompts: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Prompts to generate from at each evaluation (default: a few held-out rows).",
    )
    max_new_tokens: int = Field(24, ge=1, le=4096, description="Length of sample generations.")

    @field_validator("auto_micro_batch", mode="before")
    @classmethod
    def _auto_micro_batch_from_bool(cls, value: Any) -> Any:
        # configs written before the setting had an "auto" were booleans: keep them meaning what they meant
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    def probes_micro_batch(self, *, one_gpu: bool) -> bool:
        """Whether auto_micro_batch asks for the memory probe: "on" always (the worker says when it cannot
        run), "auto" only on one GPU and with more than one micro-batch per step to merge."""
        if self.auto_micro_batch == "auto":
            return one_gpu and self.grad_accum > 1
        return self.auto_micro_batch == "on"

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set either training.max_steps or training.epochs")
        if self.torch_compile == "on" and not self.gradient_checkpointing:
            raise ValueError(
                "training.torch_compile 'on' compiles the checkpointed decoder layers: turn on "
                "training.gradient_checkpointing, or set training.torch_compile to auto or off"
            )
        return self


class GuardConfig(_Strict):
    """What to do when training diverges (non-finite or collapsed loss, exploding gradients)."""

    policy: Literal["stop", "rollback", "warn"] = Field(
        "rollback",
        description="stop: end the run keeping the last good checkpoint; rollback: restore it, halve the "
        "learning rate and continue; warn: record and go on.",
    )
    max_rollbacks: int = Field(3, ge=0, le=100, description="Rollbacks allowed before the run stops.")
    grad_norm_factor: float = Field(
        20.0, gt=1.0, le=1e9, description="A grad_norm this many times the recent median counts as a spike."
    )
    patience: int = Field(3, ge=1, le=1000, description="Consecutive spikes that count as an explosion.")
    window: int = Field(20, ge=3, le=10_000, description="Steps of history the spike test compares against.")


class ResourcesConfig(_Strict):
    """What the job needs from the machine."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs to use (0: CPU).")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first; ties run in submission order.")
    max_runtime_minutes: float | None = Field(
        None, gt=0, le=60 * 24 * 30, description="Hard deadline; the job is stopped after this long."
    )


OnOffAuto = Literal["auto", "on", "off"]


class SpeedConfig(_Strict):
    """Speed levers: how a run computes, never what it learns. Each is "auto" by default, which lets the
    worker decide for the device, the model and the run (the run plan, RUN_DIR/plan.json, records each
    decision and why); "on" / "off" force it. Environment variables do not change these."""

    torch_dequant: OnOffAuto = Field(
        "auto",
        description="Unpack 4-bit weights with PyTorch ops inside compiled layers, so the compiler fuses the "
        "unpacking. auto: wherever the decoder layers are compiled.",
    )
    host_tables: OnOffAuto = Field(
        "auto",
        description="Keep large frozen lookup tables (Gemma 3n's per-layer embeddings) in CPU memory and "
        "copy only each batch's rows to the GPU. auto: on CUDA.",
    )
    offload_activations: OnOffAuto = Field(
        "auto",
        description="Move the inputs gradient checkpointing keeps for each layer to CPU memory until the "
        "backward pass (needs gradient_checkpointing). auto: on CUDA.",
    )
    offload_prefetch: OnOffAuto = Field(
        "auto",
        description="With offloaded activations, copy the next layer's inputs back while this one "
        "recomputes (double buffering). auto: on.",
    )
    altup_sum: OnOffAuto = Field(
        "auto",
        description="Compute Gemma 3n's AltUp prediction as multiply-adds instead of a batched 4 × 4 "
        "product. auto: wherever the decoder layers are compiled.",
    )
    compile_backend: Literal["auto", "inductor", "aot_eager", "eager"] = Field(
        "auto",
        description="torch.compile backend when training.torch_compile compiles. auto: inductor; aot_eager "
        "needs no C compiler (tests).",
    )
    compile_options: str | None = Field(
        None,
        max_length=2000,
        description='Inductor options as a JSON object, e.g. {"triton.cudagraphs": true}.',
    )
    fused_loss: OnOffAuto = Field(
        "auto",
        description="Compute the loss without storing the full logits (fused linear + cross-entropy). auto: "
        "on CUDA when liger-kernel is installed; on: also elsewhere, with a chunked PyTorch version.",
    )
    fused_loss_chunk_rows: int | None = Field(
        None,
        ge=0,
        le=1_048_576,
        description="Rows per chunk of liger-kernel's fused loss (empty: 1024; 0: liger's own sizing).",
    )
    force_torchrun: Literal["auto", "on"] = Field(
        "auto",
        description="on: run even a one-GPU job through torchrun (a dry run of the multi-GPU path). auto: "
        "torchrun only for resources.gpus above 1.",
    )

    @field_validator("compile_options")
    @classmethod
    def _json_object(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            options = json.loads(value)
        except ValueError as exc:
            raise ValueError(f'must be a JSON object such as {{"cpp_wrapper": true}} ({exc})') from None
        if not isinstance(options, dict):
            raise ValueError('must be a JSON object of inductor options, such as {"cpp_wrapper": true}')
        return value


class JobConfig(_Strict):
    """One fine-tune, fully described."""

    name: str = Field("", max_length=200, description="A label for the run.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    # preference tuning (contract/preference.py says what these mean and which fields each method reads)
    method: Method = Field("sft", description="sft, or preference tuning: dpo, orpo or kto.")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    init_adapter: str | None = Field(
        None,
        max_length=1000,
        description="Start from an earlier adapter: job:<id> (a finished job of this server) or a folder.",
    )
    # experiment trackers that also get the run's metrics (contract/trackers.py, docs/trackers.md)
    report_to: list[TrackerName] = Field(
        default_factory=list,
        max_length=4,
        description="Also send the metrics to these trackers (local mode unless the worker's environment "
        "names a server; docs/trackers.md). One that fails is dropped with a warning; the run goes on.",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("init_adapter")
    @classmethod
    def _init_adapter_form(cls, value: str | None) -> str | None:
        return check_init_adapter(value)

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> Any:
        return check_report_to(value)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `model: <id>` and `dataset: <path>` stand for their sections (contract/config_hints.py)
        return expand_shorthand(data)

    @model_validator(mode="after")
    def _fits_the_model(self) -> JobConfig:
        info = model_info(self.model.name)
        if info is not None and self.training.max_seq_len > info.max_seq_len:
            raise _FieldError(
                "training.max_seq_len",
                f"{self.model.name} handles at most {info.max_seq_len} tokens; "
                f"got {self.training.max_seq_len}",
            )
        if self.training.auto_micro_batch == "on" and self.resources.gpus != 1:
            raise _FieldError(
                "training.auto_micro_batch",
                "the memory probe runs on exactly one GPU: set resources.gpus to 1, or set this to auto "
                f"or off (resources.gpus is {self.resources.gpus})",
            )
        try:
            check_method_fields(self.method, self.preference, self.init_adapter)
        except MethodFieldError as exc:
            raise _FieldError(exc.field, exc.message) from None
        return self


class _FieldError(ValueError):
    """A cross-field problem that belongs to one named field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigError(ValueError):
    """A config that cannot run. `problems` maps dotted field paths to plain-words messages."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        lines = [f"{field or '(config)'}: {msg}" for field, msg in problems.items()]
        super().__init__("invalid job config:\n  " + "\n  ".join(lines))


def _shown(value: Any, limit: int = 120) -> str:
    """repr of a rejected value, clipped: a hostile 200 kB string must not come back in every message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 15] + f"... ({len(text)} chars)"


def _friendly(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key; check the spelling (see the config reference for allowed keys)"
    if kind == "missing":
        return "required"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {k: v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt")}
        words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
        allowed = " and ".join(f"{words[k]} {v}" for k, v in bound.items())
        return f"must be {allowed} (got {_shown(err.get('input'))})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {_shown(err.get('input'))})"
    if kind == "string_too_long":
        return f"too long: at most {ctx.get('max_length')} characters"
    if kind == "too_long":
        return f"too many items: at most {ctx.get('max_length')}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def problems_from_validation_error(exc: ValidationError) -> dict[str, str]:
    """Map a pydantic error to {dotted.field: message}, naming the field of cross-field checks too."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        # union members add their type name to the location; drop those ("list[str]", "literal['auto']")
        loc = [p for p in loc if not re.match(r"^(list\[|literal\[|function-|str$|int$|float$)", p)]
        field = ".".join(loc)
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            problems.setdefault(ctx_err.field, ctx_err.message)
            continue
        if err.get("type") == "extra_forbidden":  # with a "did you mean" where one fits
            problems.setdefault(field, unknown_key_message(field, field_paths()))
            continue
        problems.setdefault(field, _friendly(dict(err)))
    return problems


def parse_config(data: Any) -> JobConfig:
    """Validate a decoded config (a dict); raise ConfigError naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError({"": "the config must be a mapping of sections (model, dataset, training, ...)"})
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation_error(exc)) from None


MAX_YAML_NODES = 100_000


def _safe_yaml(text: str) -> Any:
    """yaml.safe_load that refuses documents whose aliases expand past MAX_YAML_NODES ("billion laughs")."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(n: yaml.Node) -> int:
            # an alias is the same node object again: memoise by identity, count every use
            if id(n) not in sizes:
                sizes[id(n)] = 1  # provisional, guards against recursive anchors
                children: list[Any] = []
                if isinstance(n, yaml.SequenceNode):
                    children = list(n.value)
                elif isinstance(n, yaml.MappingNode):
                    children = [part for pair in n.value for part in pair]
                sizes[id(n)] = 1 + sum(expanded(c) for c in children)
            return sizes[id(n)]

        if expanded(node) > MAX_YAML_NODES:
            raise ValueError(f"it expands to more than {MAX_YAML_NODES} values (anchors and aliases)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config_text(text: str, *, filename: str = "config.yaml") -> JobConfig:
    """Parse YAML or JSON text (JSON is YAML, but we give JSON's own error messages for .json files)."""
    try:
        if filename.endswith(".json"):
            data = json.loads(text) if text.strip() else {}
        else:
            data = _safe_yaml(text) if text.strip() else {}
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError; so is a 5000-digit int
        reason = "a number has thousands of digits" if "integer string conversion" in str(exc) else exc
        raise ConfigError({"": f"cannot parse {filename}: {reason}"}) from None
    except RecursionError:
        raise ConfigError({"": f"cannot parse {filename}: it is nested too deeply"}) from None
    return parse_config(data if data is not None else {})


def load_config_file(path: str | Path) -> JobConfig:
    """Read and validate a YAML or JSON config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError({"": f"cannot read {p}: {exc.strerror}"}) from None
    return load_config_text(text, filename=p.name)


def config_to_dict(config: JobConfig) -> dict[str, Any]:
    """The canonical JSON-able form (every key present, defaults filled in)."""
    return config.model_dump(mode="json")


def demo_config() -> JobConfig:
    """The one-click demo: real 4-bit QLoRA of tiny Gemma 3n on a generated task, under a minute on CPU."""
    return JobConfig.model_validate(
        {
            "name": "demo: tiny Gemma 3n learns capitals",
            "model": {"name": "preset:tiny-gemma3n"},
            "dataset": {"source": "preset:country-capitals", "num_rows": 256},
            "quantization": {"method": "nf4"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "training": {
                # measured on 2 CPU cores: eval loss ~12 -> ~0.4-0.8 (assistant tokens only), most samples
                # right by step 40; ~0.1-0.2 s a step
                "max_steps": 40,
                "learning_rate": 5e-3,
                "batch_size": 8,
                "max_seq_len": 128,
                "eval_steps": 10,
                "save_steps": 20,
                "max_new_tokens": 12,
                "warmup": 0.1,
            },
        }
    )


def field_paths(model: type[BaseModel] = JobConfig, prefix: str = "") -> list[str]:
    """Every leaf field as a dotted path (the form renders one input per path)."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths.extend(field_paths(ann, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


# ---------------------------------------------------------------------------------------------------------
# Stored configs: the `job.config` column, read back by every part of the app that needs a setting of a job

# The version of the stored shape. Rows carry no version key until the shape first changes in a way that
# defaults cannot bridge (a field renamed, removed or given a new meaning): absent means 1. That change
# bumps this number, writes `config_version` into new rows and adds an upgrade step from the old shape.
CONFIG_VERSION = 1
CONFIG_VERSION_KEY = "config_version"
# version → a function turning that version's dict into the next version's (none yet: see above)
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def stored_config(data: Any, *, schema: type[JobConfig] = JobConfig) -> JobConfig:
    """A job's stored config dict as a JobConfig; fields added since the row was written get defaults.

    Raises ConfigError when the row no longer validates (a value the schema has since tightened) or was
    written by a newer app than this one.
    """
    if not isinstance(data, dict):
        raise ConfigError({"": "the stored config is not a mapping of sections"})
    body = dict(data)
    version = body.pop(CONFIG_VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CONFIG_VERSION:
        known = f"this app reads 1 to {CONFIG_VERSION}"
        raise ConfigError({CONFIG_VERSION_KEY: f"stored with config version {version!r}; {known}"})
    while version < CONFIG_VERSION:
        body = _UPGRADES[version](body)
        version += 1
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation_error(exc)) from None
