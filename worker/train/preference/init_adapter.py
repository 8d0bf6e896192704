"""`init_adapter`: start a run from an earlier run's adapter (job:<id>) or an adapter folder.

job:<id> is found next to this run's directory: run directories are siblings named job-<id> or
job-<id>-<suffix> under the server's runs folder (app/scheduler/claim.py), so the training child needs no
database. The adapter's weights are copied into the freshly created LoRA of the same shape; a different
base model, rank or set of adapted modules is refused with the setting to change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from contract.config import ConfigError, JobConfig
from contract.preference import init_adapter_job


class InitAdapterError(ConfigError):
    """The adapter named by init_adapter cannot be used (a config error naming the field init_adapter)."""

    def __init__(self, message: str) -> None:
        super().__init__({"init_adapter": message})


def resolve_init_adapter(value: str, run_root: Path) -> Path:
    """The adapter folder `value` names (job:<id> or a path)."""
    job_id = init_adapter_job(value)
    if job_id is None:
        path = Path(value).expanduser()
        folder = path if (path / "adapter_config.json").is_file() else path / "adapter"
        if not (folder / "adapter_config.json").is_file():
            raise InitAdapterError(
                f"init_adapter {value!r} holds no adapter (no adapter_config.json there or in its adapter/ "
                "folder); give a finished run's folder or job:<id>"
            )
        return folder
    pattern = re.compile(rf"job-{job_id}(-[0-9a-f]+)?")
    runs = run_root.resolve().parent
    found = [p for p in runs.iterdir() if p.is_dir() and pattern.fullmatch(p.name)] if runs.is_dir() else []
    # the app keeps job ids above every run folder's (app/db.py), so one id has one run; newest first anyway
    for run in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if (run / "adapter" / "adapter_config.json").is_file():
            return run / "adapter"
    if found:
        raise InitAdapterError(
            f"job {job_id} has no saved adapter (it did not finish); start from a job that succeeded"
        )
    raise InitAdapterError(
        f"init_adapter job:{job_id}: no run of job {job_id} on this machine's runs folder; start from a "
        "job of this server, or give the adapter folder's path"
    )


def _base_name(folder: Path) -> str | None:
    config = folder / "tuneboard_config.json"
    if not config.is_file():
        return None
    try:
        return str(json.loads(config.read_text(encoding="utf-8"))["model"]["name"])
    except (ValueError, KeyError, TypeError):
        return None


def load_init_adapter(model: Any, cfg: JobConfig, folder: Path) -> str:
    """Copy the adapter weights of `folder` into `model`'s LoRA; a sentence saying what was loaded."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = _base_name(folder)
    if base is not None and base != cfg.model.name:
        raise InitAdapterError(
            f"init_adapter was trained on {base}, this job trains {cfg.model.name}: set model.name to {base}"
        )
    ours = model.peft_config["default"]
    if int(config.get("r", -1)) != int(ours.r):
        raise InitAdapterError(
            f"init_adapter has rank {config.get('r')}, this job's lora.r is {ours.r}: "
            f"set lora.r to {config.get('r')}"
        )
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise InitAdapterError(f"init_adapter {folder.name}: adapter_model.safetensors is missing")
    device = next(p.device for p in model.parameters() if p.requires_grad)
    weights = load_file(str(weights_file), device=str(device))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected or missing:
        raise InitAdapterError(
            "init_adapter adapts other modules than this job (set lora.target_modules and "
            f"lora.modules_to_save as in its run): {len(missing)} missing, {len(unexpected)} "
            "unexpected weights"
        )
    return f"Starting from the adapter in {folder.parent.name}/{folder.name} ({len(weights)} tensors)"
