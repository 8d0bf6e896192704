"""A job's hub model is checked when the job is created, not 17 s later in the training process.

A misspelt or private hub id used to pass submission and fail once the worker had started, loaded its
libraries and asked the Hub. Now creation asks first, and refuses (ConfigError on model.name, a 422 with
the field named) only when the answer is certain:
- the Hub says there is no such model (or it is gated, or private to someone else);
- the Hub is switched off here (HF_HUB_OFFLINE=1), the model is not in this machine's cache, and jobs run on
  this machine (launcher local; a Ray worker has its own cache and network).
A cached model, a preset and a local directory are not asked about; a Hub that cannot be reached (no network,
timeout, an error page) is no answer, and the job goes ahead as before. Hub access uses the token saved on
this machine (`hf auth login`), exactly as the training process would.
"""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings
from contract.catalog import PRESET_PREFIX
from contract.config import ConfigError, JobConfig

HUB_TIMEOUT_S = 6.0  # one metadata request; an unreachable Hub must not hold the form for long


def looks_like_hub_id(name: str) -> bool:
    """owner/name (or an old owner-less id such as gpt2): not a preset, not a path that exists or is
    written as one."""
    if name.startswith((PRESET_PREFIX, "/", ".", "~")) or name.count("/") > 1:
        return False
    return not Path(name).exists()


def check_job_model(settings: Settings, config: JobConfig) -> None:
    """Refuse a hub id the Hub says does not exist (or that cannot be had offline); anything unsure passes."""
    name, revision = config.model.name, config.model.revision
    if not looks_like_hub_id(name):
        return
    try:
        from huggingface_hub import HfApi, constants, try_to_load_from_cache
        from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    except ImportError:  # the dashboard alone, without the training extra: the worker will say
        return
    try:
        if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
            return  # downloaded before: the worker loads it from the cache
    except HFValidationError as exc:
        problem = f"{name!r} is not a valid hub id ({exc}); write it as owner/name"
        raise ConfigError({"model.name": problem}) from exc
    if constants.HF_HUB_OFFLINE:
        if settings.launcher != "local":
            return  # the workers have their own cache
        raise ConfigError(
            {
                "model.name": f"{name!r} is not in this machine's Hugging Face cache and the Hub is "
                f"switched off (HF_HUB_OFFLINE=1): download it once while online (`hf download {name}`), "
                "or choose a preset or a local model directory"
            }
        )
    try:
        HfApi(endpoint=constants.ENDPOINT).model_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as exc:
        raise ConfigError(
            {
                "model.name": f"{name!r} is gated on the Hub: accept its licence on the model's page, "
                "then log in on this machine (`hf auth login`) with an account that has access"
            }
        ) from exc
    except RepositoryNotFoundError as exc:
        at_revision = f" at revision {revision!r}" if revision else ""
        raise ConfigError(
            {
                "model.name": f"the Hub has no model {name!r}{at_revision}: check the spelling "
                "(owner/name, as on the model's page); a private model needs "
                "`hf auth login` on this machine"
            }
        ) from exc
    except Exception:  # noqa: BLE001 - no network, a timeout, a proxy's error page: no answer, go ahead
        return
