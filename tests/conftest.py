"""Shared test setup: no hub access, few threads (CI has 2 cores), and the `slow` marker.

`pytest -m "not slow"` is the fast subset (a few minutes on 2 cores); plain `pytest` runs everything.
A test is slow when it is marked `slow`, `training` or `browser`, lives in a folder of SLOW_FOLDERS, or is
listed in SLOW_MODULES; mark a new one `@pytest.mark.slow` in place when it takes more than a
few seconds on 2 cores.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Starlette's TestClient sends `Host: testserver`; the app serves only names it is reachable as
os.environ.setdefault("TUNEBOARD_ALLOWED_HOSTS", "testserver")

TESTS = Path(__file__).resolve().parent
SLOW_MARKERS = ("training", "browser")  # real 4-bit training on CPU; a real Chromium
SLOW_FOLDERS = ("faults",)  # the real app as a subprocess, killed, paused and kept away on purpose
SLOW_MODULES = (  # measured at several seconds a test or more on 2 cores
    "app/test_bad_input_schemathesis.py",  # generated requests against every route
    "app/scheduler/test_ray_launcher.py",  # a real Ray head per test
)


def is_slow(item: pytest.Item) -> bool:
    """Whether a collected test belongs outside the fast subset."""
    if item.get_closest_marker("slow") or any(item.get_closest_marker(m) for m in SLOW_MARKERS):
        return True
    try:
        where = item.path.resolve().relative_to(TESTS)
    except ValueError:
        return False
    return where.parts[0] in SLOW_FOLDERS or where.as_posix() in SLOW_MODULES


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so "not slow" sees the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
