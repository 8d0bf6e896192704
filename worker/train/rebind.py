"""Replace one method of one module instance, keeping the stock method at hand and never replacing twice.

The training levers that change how a module computes (host-kept lookup tables, AltUp's prediction, 4-bit
unpacking) rebind the method on the instance, not the class: other models in the process are untouched, and
the stock method stays reachable as `_tuneboard_stock_<method>` for fallbacks and tests.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any


def _stock_name(method: str) -> str:
    return f"_tuneboard_stock_{method}"


def is_rebound(module: Any, method: str) -> bool:
    """Whether `module.<method>` was already replaced by `rebind`."""
    return getattr(module, _stock_name(method), None) is not None


def rebind(module: Any, method: str, replacement: Callable[..., Any]) -> bool:
    """Make `replacement(module, ...)` the instance's `method`; False, doing nothing, if already rebound."""
    if is_rebound(module, method):
        return False
    setattr(module, _stock_name(method), getattr(module, method))
    setattr(module, method, types.MethodType(replacement, module))
    return True
