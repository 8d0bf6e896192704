"""Does the job's method fit its data? Checked when the job is created, not when the worker starts.

A preference file (chosen/rejected pairs) submitted with `method: sft`, or plain examples with `method: dpo`,
is refused with the sentence of contract/preference.py naming the method that fits. The app knows the layout
of uploads (their stored format) and presets (the catalogue); local files and answers labelled true/false
(KTO data, which supervised fine-tuning also reads, leaving out the bad answers) are left to the worker,
which reads the rows and refuses a mismatch the same way.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.datasets.service import UPLOAD_PREFIX
from app.models import Dataset
from contract.catalog import PRESET_DATASETS, PRESET_PREFIX
from contract.config import ConfigError, JobConfig
from contract.preference import PAIRED, layout_refusal

PREFERENCE_FORMAT = "preference"  # the stored format of chosen/rejected data (contract/datasets)


def known_format(session: Session, source: str) -> str | None:
    """The format of an upload or a preset dataset; None for a local file (the worker reads it)."""
    if source.startswith(PRESET_PREFIX):
        preset = PRESET_DATASETS.get(source[len(PRESET_PREFIX) :])
        return preset.format if preset is not None else None
    if source.startswith(UPLOAD_PREFIX):
        dataset = session.get(Dataset, source[len(UPLOAD_PREFIX) :])
        return dataset.format if dataset is not None else None
    return None


def check_method_fits_data(session: Session, config: JobConfig) -> None:
    """ConfigError on `method` when the dataset's known layout cannot be trained by it."""
    fmt = known_format(session, config.dataset.source)
    if fmt is None or config.dataset.columns is not None:  # a mapping may turn pairs into examples
        return
    layout = PAIRED if fmt == PREFERENCE_FORMAT else None
    refusal = layout_refusal(config.method, layout)
    if refusal is not None:
        raise ConfigError({"method": refusal})
