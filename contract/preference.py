"""Preference tuning in the one config schema: the `method` axis, the `preference:` section, `init_adapter`.

Torch-free (the app imports it). contract/config.py holds the fields (`method`, `preference`,
`init_adapter`) and calls `check_method_fields` from its cross-field validator; everything about what those
fields mean lives here, so config.py stays the list of sections. Which fields each method reads is
`METHOD_FIELDS` (the form shows only those). Which data layouts fit which method is `method_for_layout` and
`layout_refusal`: the worker's data preparation and the app's job checks give the same sentence.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["sft", "dpo", "orpo", "kto"]
METHODS: tuple[str, ...] = ("sft", "dpo", "orpo", "kto")
PREFERENCE_METHODS: tuple[str, ...] = ("dpo", "orpo", "kto")

METHOD_TITLES: dict[str, str] = {
    "sft": "SFT (supervised fine-tuning on answers)",
    "dpo": "DPO (direct preference optimisation on chosen/rejected pairs)",
    "orpo": "ORPO (odds-ratio preference optimisation; no reference model)",
    "kto": "KTO (Kahneman-Tversky optimisation on answers labelled good or bad)",
}

# The preference fields each method reads (the form shows these and hides the rest).
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": (),
    "dpo": ("beta", "loss_type", "label_smoothing", "reference", "max_reward_margin"),
    "orpo": ("beta", "max_reward_margin"),
    "kto": ("beta", "reference", "desirable_weight", "undesirable_weight", "max_reward_margin"),
}

# `init_adapter`: start from an earlier job's adapter (job:<id>) or an adapter folder.
INIT_ADAPTER_JOB = re.compile(r"job:([1-9][0-9]{0,17})")


class PreferenceConfig(BaseModel):
    """Parameters of DPO, ORPO and KTO (read only when `method` is one of them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="DPO/KTO: how far the policy may move from the reference (higher: stays closer); "
        "ORPO: the weight of the odds-ratio term next to the answer loss (ORPO's lambda).",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid",
        description="DPO loss: sigmoid (the DPO paper), ipo (squared, per-token averaged) or hinge (SLiC).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="DPO sigmoid loss only: the share of pairs assumed mislabelled (conservative DPO).",
    )
    reference: Literal["auto", "precomputed", "live"] = Field(
        "auto",
        description="DPO/KTO reference log-probabilities. precomputed: once before training, with the "
        "adapter as it starts (switched off for a new adapter: the base model); live: every step, from the "
        "base model with the adapter switched off. auto: precomputed (one forward pass less per step).",
    )
    desirable_weight: float = Field(
        1.0, gt=0, le=100, description="KTO: weight of the loss on answers labelled good."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, le=100, description="KTO: weight of the loss on answers labelled bad."
    )
    max_reward_margin: float = Field(
        100.0,
        gt=0,
        le=1e9,
        description="The guard's limit: a mean reward margin (chosen minus rejected) beyond this counts as "
        "runaway (the model pushes the rejected answers towards probability zero).",
    )


def check_method_fields(method: str, preference: PreferenceConfig, init_adapter: str | None) -> None:
    """Raise `MethodFieldError`, naming the field, for a preference setting the method does not use."""
    if method == "sft":
        return
    if method != "dpo" and preference.loss_type != "sigmoid":
        raise MethodFieldError(
            "preference.loss_type",
            f"is a DPO setting; method {method} has its own loss (leave loss_type at sigmoid)",
        )
    if preference.label_smoothing and (method != "dpo" or preference.loss_type != "sigmoid"):
        raise MethodFieldError(
            "preference.label_smoothing", "applies to method dpo with loss_type sigmoid only; set it to 0"
        )
    if method == "orpo" and preference.reference != "auto":
        raise MethodFieldError(
            "preference.reference", "ORPO uses no reference model; leave preference.reference at auto"
        )


def check_init_adapter(value: str | None) -> str | None:
    """`init_adapter` is job:<id> or a folder path (no NUL, not empty)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.startswith("job:") and not INIT_ADAPTER_JOB.fullmatch(text):
        raise ValueError(f"write job:<id> with the id of a finished job, e.g. job:12 (got {text!r})")
    return text


def init_adapter_job(value: str | None) -> int | None:
    """The job id of `init_adapter: job:<id>`, or None for a path or no value."""
    if value is None:
        return None
    match = INIT_ADAPTER_JOB.fullmatch(value.strip())
    return int(match.group(1)) if match else None


class MethodFieldError(ValueError):
    """A setting that does not fit the chosen method, naming its field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ------------------------------------------------------------------------------------------- data layouts

# The layouts preference data comes in (worker/train/preference/data.py reads them).
PAIRED = (
    "paired"  # prompt + chosen + rejected (strings or message lists); instruction/input + chosen/rejected
)
UNPAIRED = "unpaired"  # prompt + completion + label, or messages + label (KTO)
PREFERENCE_LAYOUTS = (PAIRED, UNPAIRED)


def preference_layout(row: Any) -> str | None:
    """PAIRED, UNPAIRED or None (an SFT layout or something else) for one row."""
    if not isinstance(row, dict):
        return None
    if "chosen" in row and "rejected" in row:
        return PAIRED
    if ("label" in row or "kto_tag" in row) and ("completion" in row or "messages" in row):
        return UNPAIRED  # kto_tag: LLaMA-Factory's name for the label
    return None


def methods_for_layout(layout: str | None) -> tuple[str, ...]:
    """The methods that train on rows of `layout` (None: an SFT layout)."""
    if layout == PAIRED:
        return ("dpo", "orpo", "kto")  # KTO reads each pair as one good and one bad answer
    if layout == UNPAIRED:
        return ("kto",)
    return ("sft",)


def layout_refusal(method: str, layout: str | None) -> str | None:
    """The sentence refusing `method` on data of `layout`, or None when they fit."""
    fits = methods_for_layout(layout)
    if method in fits:
        return None
    if layout is None:
        return (
            f"method {method} needs preference data (prompt/chosen/rejected pairs"
            + (", or prompt/completion with a true/false label" if method == "kto" else "")
            + "), but this dataset holds plain examples: train it with method: sft, or give a preference file"
        )
    what = "chosen/rejected pairs" if layout == PAIRED else "answers labelled true/false (label)"
    names = " or ".join(f"method: {m}" for m in fits)
    return f"this dataset holds {what}, which method {method} cannot train on: use {names}"


# ------------------------------------------------------------------------------------------- rows, read

ROLE_NAMES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}
Messages = list[dict[str, str]]


def _message(item: Any, where: str) -> dict[str, str]:
    """One chat message as {role, content}; LLaMA-Factory's {from, value} is read too."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: each message must be an object with role and content")
    role = item.get("role", item.get("from"))
    content = item.get("content", item.get("value"))
    if role not in ROLE_NAMES:
        raise ValueError(f"{where}: unknown role {role!r}; use system, user or assistant")
    if not isinstance(content, str):
        raise ValueError(f"{where}: a message's content must be a string")
    return {"role": ROLE_NAMES[str(role)], "content": content}


def _messages(value: Any, where: str, role: str) -> Messages:
    """A string (one message of `role`), one message object, or a list of messages."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where} is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [_message(value, where)]
    if isinstance(value, list) and value:
        return [_message(m, where) for m in value]
    raise ValueError(f"{where} must be a non-empty string or a list of messages")


def _answer(value: Any, where: str) -> Messages:
    answer = _messages(value, where, "assistant")
    if answer[-1]["role"] != "assistant" or not answer[-1]["content"].strip():
        raise ValueError(f"{where} must end with a non-empty assistant message")
    return answer


def _prompt(row: dict[str, Any]) -> Messages | None:
    """The prompt of a row: prompt, instruction (+ input, + system), or conversations; None when absent."""
    if "prompt" in row:
        return _messages(row["prompt"], "prompt", "user")
    if "instruction" in row:
        text = row["instruction"]
        extra = row.get("input") or ""
        if not isinstance(text, str) or not isinstance(extra, str) or not (text + extra).strip():
            raise ValueError("instruction (and input) must be strings, not both empty")
        system = row.get("system")
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return [*head, {"role": "user", "content": text + ("\n" + extra if extra else "")}]
    if "conversations" in row:
        return _messages(row["conversations"], "conversations", "user")
    return None


def read_pair(row: dict[str, Any]) -> tuple[Messages, Messages, Messages]:
    """(prompt, chosen, rejected) messages of a paired row; ValueError says what is wrong with it.

    Layouts: prompt/chosen/rejected as strings or message lists (TRL's), instruction/input/chosen/rejected
    (LLaMA-Factory alpaca), conversations/chosen/rejected (LLaMA-Factory sharegpt), and chosen/rejected as
    whole conversations sharing everything up to the last answer (TRL's implicit prompt).
    """
    prompt = _prompt(row)
    chosen = _answer(row["chosen"], "chosen")
    rejected = _answer(row["rejected"], "rejected")
    if prompt is None:
        if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
            raise ValueError(
                "no prompt column: chosen and rejected must then be conversations that share "
                "everything but their last answer"
            )
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if chosen == rejected:
        raise ValueError("chosen and rejected are the same answer, so the pair teaches nothing")
    return prompt, chosen, rejected


def read_labelled(row: dict[str, Any]) -> tuple[Messages, Messages, bool]:
    """(prompt, completion, label) of an unpaired row (KTO); ValueError says what is wrong with it."""
    label = row.get("label", row.get("kto_tag"))
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):
        label = label.strip().lower() == "true"  # CSV cells are strings
    if label in (0, 1) and not isinstance(label, bool):
        label = bool(label)
    if not isinstance(label, bool):
        raise ValueError(f"label must be true or false (got {label!r})")
    if "completion" in row:
        prompt = _prompt(row)
        if prompt is None:
            raise ValueError("a completion needs a prompt column")
        return prompt, _answer(row["completion"], "completion"), label
    messages = _messages(row.get("messages"), "messages", "user")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError("messages must end with the assistant answer the label judges")
    return messages[:-1], _answer(messages[-1:], "messages"), label


def preference_row_problem(row: Any, layout: str) -> str | None:
    """What is wrong with one row of a preference dataset of `layout` (None: nothing)."""
    if not isinstance(row, dict):
        return "each row must be an object"
    try:
        if layout == PAIRED:
            if "chosen" not in row or "rejected" not in row:
                return "needs chosen and rejected columns like the other rows"
            read_pair(row)
        else:
            if "label" not in row and "kto_tag" not in row:
                return "needs a label column (true or false) like the other rows"
            read_labelled(row)
    except ValueError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------- follow-up job

DEMO_PREFERENCE_DATASET = "preset:uppercase-preference"


def followup_config(data: dict[str, Any], job_id: int, method: str) -> dict[str, Any]:
    """A finished job's config (a canonical dict) turned into preference tuning from its adapter.

    Same model, quantization and LoRA shape (the adapter must fit); the preference dataset is the demo
    pairs until the user picks theirs; the SFT dataset's eval split and the training loop are kept.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    out["method"] = method
    out["init_adapter"] = f"job:{job_id}"
    base = str(out.get("name") or f"job {job_id}")
    out["name"] = f"{method.upper()} from #{job_id}: {base}"[:200]
    dataset = dict(out.get("dataset") or {})
    dataset["source"] = DEMO_PREFERENCE_DATASET
    dataset["format"] = "auto"
    out["dataset"] = dataset
    return out


def sft_then_dpo_demo(demo: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The practitioner's usual path as two demo jobs: SFT (the demo, short), then DPO on the upper-case
    pairs from its adapter. The DPO config's init_adapter is "job:SFT" and is filled in once the SFT job
    exists (the scheduler starts it when the SFT job has succeeded)."""
    sft = {k: (dict(v) if isinstance(v, dict) else v) for k, v in demo.items()}
    sft["name"] = "demo 1/2: SFT, tiny Gemma 3n learns its chats"
    sft["training"] = {**sft["training"], "max_steps": 8, "eval_steps": 0, "save_steps": 8}
    dpo = preference_demo(sft)
    dpo["name"] = "demo 2/2: DPO from the SFT adapter, learns to prefer upper case"
    dpo["preference"] = {"beta": 0.1}
    dpo["training"] = {**dpo["training"], "max_steps": 12, "batch_size": 8, "eval_steps": 6, "save_steps": 6}
    return sft, dpo


def preference_demo(demo: dict[str, Any]) -> dict[str, Any]:
    """The demo config (a canonical dict) as DPO on the generated upper-case pairs: tiny Gemma 3n in 4-bit
    learns the preference on CPU in well under a minute (held-out reward accuracy ~1.0 by step 12)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in demo.items()}
    out["name"] = "demo: tiny Gemma 3n learns to prefer upper case (DPO)"
    out["method"] = "dpo"
    out["dataset"] = {
        **out["dataset"],
        "source": DEMO_PREFERENCE_DATASET,
        "num_rows": 96,
        "eval_fraction": 0.25,
    }
    training = {"max_steps": 16, "learning_rate": 5e-3, "max_seq_len": 64, "eval_steps": 8, "save_steps": 8}
    out["training"] = {**out["training"], **training}
    return out
