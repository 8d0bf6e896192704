"""docs/config-reference.md is generated from contract.config.JobConfig and must match the schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from contract.config import field_paths

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    path = REPO / "docs" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_config_reference_is_what_the_generator_writes_from_the_schema() -> None:
    committed = (REPO / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert committed == _generator().render(), (
        "docs/config-reference.md is stale: run .venv/bin/python docs/gen_config_reference.py and commit it"
    )


def test_the_config_reference_has_a_row_for_every_schema_field() -> None:
    text = _generator().render()
    missing = [path for path in field_paths() if f"| `{path}` |" not in text]
    assert not missing, f"fields without a row: {missing}"
