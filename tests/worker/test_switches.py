"""The environment switches that force a training lever on or off (worker/train/switches.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.train.compile import COMPILE_ENV, compile_wanted
from worker.train.host_tables import HOST_TABLES_ENV, host_tables_wanted


@pytest.mark.parametrize(
    ("env", "wanted"), [(COMPILE_ENV, compile_wanted), (HOST_TABLES_ENV, host_tables_wanted)]
)
def test_the_env_knob_forces_the_lever_and_refuses_what_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, env: str, wanted: Callable[[str], bool]
) -> None:
    monkeypatch.setenv(env, "0")
    assert wanted("cuda") is False
    monkeypatch.setenv(env, "1")
    assert wanted("cpu") is True
    monkeypatch.setenv(env, "maybe")
    with pytest.raises(ValueError, match=env):
        wanted("cuda")
