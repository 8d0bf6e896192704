"""Every metric key a training process reports, with the chart panel it is drawn in, its label and unit.

The one table: the worker reports these keys, the job page draws its panels from PANELS and METRICS
(the browser receives both, rendered into the page by app/templating.py), and the compare page offers
the charted keys first and the x-axis keys as its x axes. A key missing here is still stored and listed;
it just has no panel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ChartPanel:
    """One chart of the job page."""

    id: str
    title: str
    note: str = ""  # shown muted after the title: what the lines are, the unit
    log_toggle: bool = False  # offer a log scale (gradient norms span decades when a run diverges)
    zero_based: bool = False  # memory and throughput start at zero: a 4 MB wobble must not look like a leak


@dataclass(frozen=True)
class MetricSpec:
    """One metric key: where it is drawn and how it is named."""

    key: str
    label: str
    unit: str = ""
    panel: str | None = None  # ChartPanel.id; None: stored and listed, not drawn on the job page
    colour: int = 1  # the page's --cN colour variable
    points: bool = False  # draw dots (sparse series such as eval_loss)
    scale: Literal["y", "pct"] = "y"  # "pct": a 0-100 axis on the right
    x_axis: bool = False  # a cumulative count the compare page can put on its x axis instead of the step


PANELS: tuple[ChartPanel, ...] = (
    ChartPanel("loss", "Loss", "(train, eval)"),
    ChartPanel("grad_norm", "Gradient norm", log_toggle=True),
    ChartPanel("learning_rate", "Learning rate"),
    ChartPanel("tokens_per_second", "Tokens per second", zero_based=True),
    ChartPanel("memory", "Memory", "(GB; GPU utilisation in %)", zero_based=True),
)

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("loss", "loss", panel="loss", colour=1),
    MetricSpec("eval_loss", "eval_loss", panel="loss", colour=2, points=True),
    MetricSpec("grad_norm", "grad_norm", panel="grad_norm", colour=1),
    MetricSpec("learning_rate", "learning_rate", panel="learning_rate", colour=3),
    MetricSpec("tokens_per_second", "tokens/s", "tokens/s", panel="tokens_per_second", colour=4),
    # the x axes the compare page offers after the step, in this order
    MetricSpec("tokens_seen", "tokens seen", "tokens", x_axis=True),
    MetricSpec("epoch", "epoch", x_axis=True),
    MetricSpec("vram_allocated_gb", "allocated GB", "GB", panel="memory", colour=1),
    MetricSpec("vram_reserved_gb", "reserved GB", "GB", panel="memory", colour=3),
    MetricSpec("vram_peak_gb", "peak GB", "GB", panel="memory", colour=2),
    MetricSpec("rss_gb", "RSS GB", "GB", panel="memory", colour=4),
    MetricSpec("gpu_util", "GPU util %", "%", panel="memory", colour=5, scale="pct"),
    MetricSpec("gpu_power_w", "GPU power W", "W"),
)

METRIC_BY_KEY: dict[str, MetricSpec] = {m.key: m for m in METRICS}
METRIC_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)
# the keys the job page draws, panel by panel (the compare picker offers these first)
CHARTED_KEYS: tuple[str, ...] = tuple(m.key for p in PANELS for m in METRICS if m.panel == p.id)
X_AXIS_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS if m.x_axis)


def panel_metrics(panel_id: str) -> tuple[MetricSpec, ...]:
    """The metrics drawn in one panel, in table order."""
    return tuple(m for m in METRICS if m.panel == panel_id)


def metric_label(key: str) -> str:
    """The label of a metric key (the key itself when the table does not know it)."""
    spec = METRIC_BY_KEY.get(key)
    return spec.label if spec is not None else key


def browser_table() -> dict[str, Any]:
    """The panels and metrics as JSON-able data, for the page's scripts."""
    return {"panels": [asdict(p) for p in PANELS], "metrics": [asdict(m) for m in METRICS]}
