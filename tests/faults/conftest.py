"""Fixtures for the fault tests: a factory of real app processes, cleaned up (app and children) after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FAKE_TRAINER, AppProcess


@pytest.fixture(scope="session")
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preset cache for every real worker of the session (the tiny model is built once)."""
    return tmp_path_factory.mktemp("preset-cache")


@pytest.fixture
def make_app(tmp_path: Path, preset_cache: Path) -> Iterator[Callable[..., AppProcess]]:
    """make_app(worker_module=..., cpu_slots=..., env={...}, start=True) → a running AppProcess."""
    made: list[AppProcess] = []

    def make(
        *,
        worker_module: str = FAKE_TRAINER,
        cpu_slots: int = 1,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        start: bool = True,
    ) -> AppProcess:
        extra: dict[str, Any] = {"TUNEBOARD_CACHE_DIR": str(preset_cache), **(env or {})}
        app = AppProcess(
            data_dir=data_dir or tmp_path / f"data-{len(made)}",
            worker_module=worker_module,
            cpu_slots=cpu_slots,
            extra_env=extra,
        )
        made.append(app)
        if start:
            app.start()
        return app

    yield make
    for app in made:
        app.close()
