"""Lint is part of the tests: the tree passes ruff, and each folder's import boundary is a rule that fails.

The boundaries (app/ never imports the ML stack or worker/; worker/ never the database or the web app;
contract/ neither side) live in app/ruff.toml, worker/ruff.toml and contract/ruff.toml. The probes below feed
ruff a file that crosses each boundary, under that folder's name, and expect the rule to fire.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# a call through a shell, spelled in pieces so this file itself holds no such call
SHELL_PROBE = "import subprocess\nsubprocess.run('ls', " + "shell" + "=True)\n"


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is not installed (pip install -e '.[dev]')"
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def test_the_whole_tree_passes_ruff() -> None:
    result = ruff("check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.parametrize(
    ("where", "code", "rule"),
    [
        ("app/probe.py", "import torch.nn\n", "TID251"),
        ("app/probe.py", "from transformers import AutoModel\n", "TID251"),
        ("app/probe.py", "from worker.train.run import run_standalone\n", "TID251"),
        ("worker/train/probe.py", "from sqlalchemy import select\n", "TID251"),
        ("worker/probe.py", "from app.db import make_engine\n", "TID251"),
        ("contract/probe.py", "import torch\n", "TID251"),
        ("contract/probe.py", "from app.models import Job\n", "TID251"),
        ("contract/probe.py", "from worker.presets import CAPITALS\n", "TID251"),
        ("tuneboard/probe.py", SHELL_PROBE, "S602"),
    ],
)
def test_crossing_a_folder_boundary_fails_lint(where: str, code: str, rule: str) -> None:
    result = ruff("check", "--no-cache", "--select", rule, "--stdin-filename", where, "-", stdin=code)
    assert result.returncode == 1 and rule in result.stdout, f"{where}: {code!r} passed lint\n{result.stdout}"


def test_the_same_imports_are_fine_where_they_belong() -> None:
    allowed = [
        ("worker/train/probe.py", "import torch\n\nprint(torch)\n"),
        ("app/probe.py", "from contract.config import JobConfig\n\nprint(JobConfig)\n"),
        ("worker/probe.py", "from contract.rundir import RunDir\n\nprint(RunDir)\n"),
    ]
    for where, code in allowed:
        result = ruff("check", "--no-cache", "--select", "TID251", "--stdin-filename", where, "-", stdin=code)
        assert result.returncode == 0, f"{where}: {result.stdout}"
