"""The new-job form, generated from JobConfig: one input per leaf field, and the way back from posted fields.

Labels come from the field names (FIELD_LABELS where a name alone reads badly), help text from the field
descriptions and their bounds, input kinds from the annotations. Types are left to pydantic to judge: a
posted "abc" for a number reaches parse_config, which names the field and the problem.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from starlette.datastructures import FormData

from contract.config import ConfigError, JobConfig, field_paths
from contract.config_import import ImportResult, import_config_text, looks_foreign
from contract.preference import METHOD_FIELDS

# the sections of JobConfig in form order, with the legend each fieldset shows
SECTION_TITLES: dict[str, str] = {
    "": "Run",
    "model": "Model",
    "dataset": "Dataset",
    "quantization": "Quantization",
    "lora": "LoRA adapter",
    "training": "Training",
    "guard": "Divergence guard",
    "resources": "Resources",
    "speed": "Speed levers (advanced)",
    "tracking": "Experiment trackers",
    "preference": "Preference tuning (DPO, ORPO, KTO)",
}
# labels that the field name alone would spell badly
FIELD_LABELS = {
    "r": "Rank (r)",
    "gpus": "GPUs",
    "attn_implementation": "Attention kernel",
    "max_seq_len": "Max sequence length",
    "grad_accum": "Gradient accumulation",
    "auto_micro_batch": "Auto micro-batch",
    "eval_fraction": "Eval fraction",
    "max_new_tokens": "Sample length (tokens)",
    "max_runtime_minutes": "Max runtime (minutes)",
    "report_to": "Also report to",
    "run_name": "Run name in the trackers",
    "method": "Method",
    "init_adapter": "Start from adapter",
    "loss_type": "DPO loss",
}
# list fields whose items may themselves contain commas: one item per line instead
LINE_LIST_FIELDS = frozenset({"training.sample_prompts"})


@dataclass(frozen=True)
class FormField:
    """One input of the new-job form, derived from a JobConfig leaf field."""

    path: str  # dotted: training.learning_rate (also the input's name)
    section: str  # "" for top-level fields
    label: str
    kind: str  # select | checkbox | checks (one box per choice of a list) | number | text | list | lines
    choices: tuple[str, ...]
    optional: bool
    integer: bool
    help: str
    allows_auto: bool  # list fields that also accept the word "auto"
    methods: tuple[str, ...] = ()  # shown only for these config `method`s (empty: always)

    @property
    def input_id(self) -> str:
        """The HTML id of the input (the label's `for`)."""
        return "f-" + self.path.replace(".", "-")

    @property
    def error_id(self) -> str:
        """The HTML id of this field's inline error message."""
        return self.input_id + "-error"


def _field_info(path: str) -> FieldInfo:
    model: type[BaseModel] = JobConfig
    parts = path.split(".")
    for part in parts[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model.model_fields[parts[-1]]


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _constraint_hint(info: FieldInfo) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bounds = []
    for meta in info.metadata:
        for attr, sign in words.items():
            value = getattr(meta, attr, None)
            if isinstance(value, (int, float)):
                shown = f"{value:,}" if float(value).is_integer() and abs(value) >= 10_000 else f"{value:g}"
                bounds.append(f"{sign} {shown.replace(',', ' ')}")
    return ", ".join(bounds)


def _make_field(path: str) -> FormField:
    info = _field_info(path)
    section, _, name = path.rpartition(".")
    members = _union_members(info.annotation)
    optional = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    literals = [m for m in members if typing.get_origin(m) is typing.Literal]
    lists = [m for m in members if typing.get_origin(m) is list]
    kind, integer, allows_auto = "text", False, False
    choices: tuple[str, ...] = ()
    item_literals = [a for m in lists for a in typing.get_args(m) if typing.get_origin(a) is typing.Literal]
    if item_literals:  # a list of fixed names (report_to): one checkbox per name
        kind = "checks"
        choices = tuple(str(v) for lit in item_literals for v in typing.get_args(lit))
    elif lists:
        kind = "lines" if path in LINE_LIST_FIELDS else "list"
        allows_auto = bool(literals)
    elif literals:
        kind = "select"
        choices = tuple(str(v) for lit in literals for v in typing.get_args(lit))
    elif members == (bool,):
        kind = "checkbox"
    elif members in ((int,), (float,)):
        kind = "number"
        integer = members == (int,)
    help_text = info.description or ""
    hint = _constraint_hint(info)
    # descriptions that already state their range in parentheses do not need it twice
    if hint and kind == "number" and "(" not in help_text:
        help_text = f"{help_text} Allowed: {hint}."
    if optional:
        help_text += " Leave empty for none."
    if kind == "list":
        help_text += " Comma-separated."
    elif kind == "lines":
        help_text += " One per line."
    label = FIELD_LABELS.get(name) or name.replace("_", " ").capitalize()
    # the preference section shows only what the chosen method reads (contract/preference.py METHOD_FIELDS)
    methods = tuple(m for m, used in METHOD_FIELDS.items() if name in used) if section == "preference" else ()
    return FormField(
        path, section, label, kind, choices, optional, integer, help_text.strip(), allows_auto, methods
    )


FORM_FIELDS: tuple[FormField, ...] = tuple(_make_field(p) for p in field_paths())


def form_sections() -> list[tuple[str, str, list[FormField]]]:
    """(section key, legend, fields) in schema order."""
    grouped: dict[str, list[FormField]] = {}
    for f in FORM_FIELDS:
        grouped.setdefault(f.section, []).append(f)
    return [(key, SECTION_TITLES.get(key, key.capitalize()), grouped[key]) for key in grouped]


def _format_value(f: FormField, value: Any) -> str:
    if value is None:
        return ""
    if f.kind == "checkbox":
        return "true" if value else "false"
    if isinstance(value, list):
        return ("\n" if f.kind == "lines" else ", ").join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() or abs(value) >= 1e16 else str(int(value))
    return str(value)


def _lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def form_values_from_config(config: dict[str, Any]) -> dict[str, str]:
    """The form's text values for a (canonical) config dict."""
    return {f.path: _format_value(f, _lookup(config, f.path)) for f in FORM_FIELDS}


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def config_from_form(form: FormData) -> tuple[dict[str, Any], dict[str, str]]:
    """(config dict to validate, the raw values to show again). Types are left to pydantic to judge."""
    data: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for f in FORM_FIELDS:
        values = [v for v in form.getlist(f.path) if isinstance(v, str)]
        if f.kind == "checkbox":
            # a hidden "false" precedes the checkbox: an unchecked box sends only that one
            checked = bool(values) and values[-1] == "true"
            raw[f.path] = "true" if checked else "false"
            _set_path(data, f.path, checked)
            continue
        if f.kind == "checks":  # the checked boxes arrive, one value each (a client may send "a, b")
            chosen = [item.strip() for v in values for item in v.split(",") if item.strip()]
            raw[f.path] = ", ".join(chosen)
            _set_path(data, f.path, chosen)
            continue
        text = values[-1] if values else ""
        raw[f.path] = text
        stripped = text.strip()
        value: Any
        if f.kind == "list":
            if f.allows_auto and stripped == "auto":
                value = "auto"
            else:
                value = [item.strip() for item in stripped.split(",") if item.strip()]
        elif f.kind == "lines":
            value = [line.strip() for line in text.splitlines() if line.strip()]
        elif f.optional and stripped == "":
            value = None
        elif f.kind == "number":
            value = stripped  # "abc" or "" reach pydantic, which names the field and the problem
        else:
            value = text if f.path == "name" else stripped
        _set_path(data, f.path, value)
    return data, raw


def split_problems(problems: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Problems by field path, by section, and the rest (shown above the form)."""
    paths = {f.path for f in FORM_FIELDS}
    by_field: dict[str, str] = {}
    by_section: dict[str, str] = {}
    general: dict[str, str] = {}
    for key, message in problems.items():
        if key in paths:
            by_field[key] = message
        elif key in SECTION_TITLES and key:
            by_section[key] = message
        else:
            general[key] = message
    return by_field, by_section, general


def convert_pasted_config(text: str) -> ImportResult | None:
    """A pasted LLaMA-Factory or Axolotl YAML converted to ours (to show for review), or None for any other
    text. The form never creates a job from a conversion directly: the user sees what was not mapped first."""
    if not looks_foreign(text):
        return None
    try:
        return import_config_text(text)
    except ConfigError:
        return None
