"""Import boundaries: the web process never loads the ML stack; the training child never touches the DB."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ML_STACK = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "datasets")


def app_modules() -> list[str]:
    """Every module under app/ (scheduler and pages included as they appear)."""
    names = ["app"]
    for info in pkgutil.walk_packages([str(REPO / "app")], prefix="app."):
        names.append(info.name)
    return sorted(names)


def loaded_ml_modules(modules: list[str]) -> dict[str, list[str]]:
    """Import `modules` in a fresh interpreter; report which ML packages each import pulled in."""
    probe = (
        "import importlib, json, sys\n"
        f"banned = {ML_STACK!r}\n"
        "found = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    hits = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "    if hits:\n"
        "        found[name] = hits[:5]\n"
        "        break\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_app_list_covers_the_core_modules() -> None:
    names = app_modules()
    for required in ("app.main", "app.deps", "app.jobs.service", "app.metrics.ingest", "app.metrics.stream"):
        assert required in names


def test_importing_every_app_module_and_the_cli_loads_no_ml_library() -> None:
    modules = [*app_modules(), "tuneboard.cli"]
    found = loaded_ml_modules(modules)
    assert found == {}, (
        f"importing {next(iter(found))} loaded {found}: keep torch & co. out of app/ and the CLI"
    )


def test_building_the_app_loads_no_ml_library() -> None:
    probe = (
        "import sys\n"
        "from app.main import create_app\n"
        "create_app()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ML_STACK!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_shared_worker_contracts_load_no_ml_library() -> None:
    found = loaded_ml_modules(["contract.config", "contract.protocol", "contract.catalog"])
    assert found == {}, f"{found}: these modules are imported by the app and must stay torch-free"


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_under_worker_train_imports_the_database_or_the_app() -> None:
    files = sorted((REPO / "worker" / "train").rglob("*.py"))
    assert files, "worker/train has no Python files to check"
    offenders = {
        str(f.relative_to(REPO)): sorted(_top_level_imports(f) & {"sqlalchemy", "alembic", "app"})
        for f in files
    }
    offenders = {f: names for f, names in offenders.items() if names}
    assert offenders == {}, f"the training child must talk to the app over HTTP only: {offenders}"


def test_the_ast_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from app.models import Job\n    import sqlalchemy.orm\n")
    assert _top_level_imports(sample) == {"app", "sqlalchemy"}
