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


def test_a_lever_takes_its_default_unless_the_variable_forces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.train.switches import lever_on

    monkeypatch.delenv("TB_TEST_LEVER", raising=False)
    assert lever_on("TB_TEST_LEVER", default=True) and not lever_on("TB_TEST_LEVER", default=False)
    monkeypatch.setenv("TB_TEST_LEVER", "auto")
    assert lever_on("TB_TEST_LEVER", default=True)
    monkeypatch.setenv("TB_TEST_LEVER", "0")
    assert not lever_on("TB_TEST_LEVER", default=True)


def test_rebind_replaces_an_instance_method_once_and_keeps_the_stock_one() -> None:
    import torch

    from worker.train.rebind import is_rebound, rebind

    layer, other = torch.nn.Identity(), torch.nn.Identity()
    assert rebind(layer, "forward", lambda self, x: self._tuneboard_stock_forward(x) + 1)
    assert not rebind(layer, "forward", lambda self, x: x * 0)  # already rebound: left as it is
    assert is_rebound(layer, "forward") and not is_rebound(other, "forward")
    assert layer(torch.ones(2)).tolist() == [2.0, 2.0]
    assert other(torch.ones(2)).tolist() == [1.0, 1.0]  # the class is untouched
