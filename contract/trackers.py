"""`report_to` and `tracking`: which experiment trackers also get a run's metrics, and under what names.

Pure python (the app imports it). contract/config.py holds the fields; the worker's forwarder
(worker/train/trackers/) sends every METRIC event of the run to the named trackers. Where each tracker
writes (a local directory in the run, or a server) and its credentials come from the tracker's own
environment variables on the worker, never from the config: docs/trackers.md.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TrackerName = Literal["wandb", "mlflow", "tensorboard", "trackio"]
TRACKERS: tuple[str, ...] = ("wandb", "mlflow", "tensorboard", "trackio")
# how other tools spell them (Hugging Face's report_to takes the same names, plus "none" and "all")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ALIASES = {"w&b": "wandb", "weights_and_biases": "wandb", "tensorboardx": "tensorboard", "tb": "tensorboard"}


def check_report_to(value: Any) -> Any:
    """Normalise `report_to` before its items are checked: a single name, "none" and "all" as Hugging Face's
    TrainingArguments take them, aliases, duplicates dropped; an unknown name says which one was meant."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        return value  # pydantic says "must be a list"
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            return value  # pydantic names the bad item
        name = item.strip().lower()
        name = _ALIASES.get(name, name)
        if name == "none":
            continue
        if name == "all":
            names = list(TRACKERS)
        elif name in TRACKERS:
            names = [name]
        else:
            raise ValueError(unknown_tracker_message(item))
        out.extend(n for n in names if n not in out)
    return out


def unknown_tracker_message(name: str) -> str:
    """The sentence for a tracker name Tuneboard does not know, with the nearest known one."""
    close = difflib.get_close_matches(name.strip().lower(), TRACKERS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = name if len(name) <= 40 else name[:37] + "..."
    return f"unknown tracker {shown!r}: {hint}Tuneboard reports to {', '.join(TRACKERS)} (or none)"


class TrackingConfig(BaseModel):
    """Names the run carries in the trackers of `report_to` (read only when it names one)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, str_max_length=200)

    project: str = Field(
        "tuneboard",
        min_length=1,
        max_length=100,
        description="W&B and Trackio project, MLflow experiment (letters, digits, _ . -).",
    )
    run_name: str = Field(
        "",
        max_length=200,
        description="The run's name in the trackers; empty: the job's name, or its id.",
    )

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str) -> str:
        if not _PROJECT.fullmatch(value):
            raise ValueError(
                f"{value[:60]!r} is not a project name every tracker takes: use letters, digits, _ . and - "
                "(starting with a letter or digit), such as my-project"
            )
        return value

    @field_validator("run_name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError("must be one line without control characters (a tab or a newline)")
        return value
