"""The tree answers "where does X live": no god modules in the source folders.

A module over 500 lines must say in its docstring why it is one thing ("... is one thing ..."); otherwise it
should be split by trade, as app/pages.py and worker/train/pipeline.py were.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 500


@pytest.mark.parametrize("folder", ["app", "contract", "worker", "tuneboard"])
def test_no_module_is_a_god_module(folder: str) -> None:
    too_long = []
    for path in sorted((REPO / folder).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines <= LIMIT:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if "is one thing" not in docstring:
            too_long.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert not too_long, (
        f"over {LIMIT} lines without a docstring saying why it is one thing: {', '.join(too_long)}; "
        "split by trade or explain"
    )
