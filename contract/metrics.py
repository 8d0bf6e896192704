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
    methods: tuple[str, ...] = ()  # the config `method`s whose job pages draw it (empty: every method)
    cpu_note: str = ""  # the note instead, on the page of a job that runs without a GPU

    def note_for(self, on_cpu: bool) -> str:
        """The note under the title: a CPU job's memory chart has no GPU to speak of."""
        return self.cpu_note if on_cpu and self.cpu_note else self.note


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


PREF = ("dpo", "orpo", "kto")  # the preference methods (contract/preference.py)

PANELS: tuple[ChartPanel, ...] = (
    ChartPanel("loss", "Loss", "(train, eval)"),
    ChartPanel("grad_norm", "Gradient norm", log_toggle=True),
    ChartPanel("learning_rate", "Learning rate"),
    ChartPanel("tokens_per_second", "Tokens per second", zero_based=True),
    ChartPanel(
        "memory", "Memory", "(GB; GPU utilisation in %)", zero_based=True, cpu_note="(GB: the process's RAM)"
    ),
    # preference tuning (worker/train/preference/losses.py): what each method reports
    ChartPanel(
        "rewards", "Rewards", "(β × log-ratio to the reference; ORPO: β × mean log-prob)", methods=PREF
    ),
    ChartPanel(
        "reward_margins",
        "Reward margin",
        "(chosen − rejected: grows as the preference is learned)",
        methods=PREF,
    ),
    ChartPanel(
        "reward_accuracy",
        "Reward accuracy",
        "(share of pairs whose chosen answer scores higher)",
        methods=PREF,
    ),
    ChartPanel("logps", "Answer log-probabilities", "(summed over answer tokens; ORPO: mean)", methods=PREF),
    ChartPanel("kl", "KL estimate", "(KTO: policy vs reference on mismatched pairs)", methods=("kto",)),
    ChartPanel("odds_ratio", "Odds ratio", "(ORPO: log σ(log odds) and the answer loss)", methods=("orpo",)),
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
    MetricSpec("rewards/chosen", "chosen", panel="rewards", colour=1),
    MetricSpec("rewards/rejected", "rejected", panel="rewards", colour=2),
    MetricSpec("eval_rewards/chosen", "eval chosen", panel="rewards", colour=3, points=True),
    MetricSpec("eval_rewards/rejected", "eval rejected", panel="rewards", colour=4, points=True),
    MetricSpec("rewards/margins", "margin", panel="reward_margins", colour=1),
    MetricSpec("eval_rewards/margins", "eval margin", panel="reward_margins", colour=2, points=True),
    MetricSpec("rewards/accuracies", "accuracy", panel="reward_accuracy", colour=1),
    MetricSpec("eval_rewards/accuracies", "eval accuracy", panel="reward_accuracy", colour=2, points=True),
    MetricSpec("logps/chosen", "chosen", panel="logps", colour=1),
    MetricSpec("logps/rejected", "rejected", panel="logps", colour=2),
    MetricSpec("eval_logps/chosen", "eval chosen", panel="logps", colour=3, points=True),
    MetricSpec("eval_logps/rejected", "eval rejected", panel="logps", colour=4, points=True),
    MetricSpec("kl", "KL", panel="kl", colour=1),
    MetricSpec("eval_kl", "eval KL", panel="kl", colour=2, points=True),
    MetricSpec("log_odds_ratio", "log σ(log odds)", panel="odds_ratio", colour=1),
    MetricSpec("nll_loss", "answer loss (NLL)", panel="odds_ratio", colour=2),
    MetricSpec("log_odds_chosen", "log odds"),
    MetricSpec("eval_log_odds_ratio", "eval log σ(log odds)", panel="odds_ratio", colour=3, points=True),
    MetricSpec("eval_nll_loss", "eval answer loss (NLL)", panel="odds_ratio", colour=4, points=True),
    MetricSpec("eval_log_odds_chosen", "eval log odds"),
)

METRIC_BY_KEY: dict[str, MetricSpec] = {m.key: m for m in METRICS}
METRIC_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS)
# the keys the job page draws, panel by panel (the compare picker offers these first)
CHARTED_KEYS: tuple[str, ...] = tuple(m.key for p in PANELS for m in METRICS if m.panel == p.id)
X_AXIS_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS if m.x_axis)


# what a preference run reports besides the SFT keys (worker/train/callbacks/metrics.py forwards these)
PREFERENCE_KEYS: frozenset[str] = frozenset(
    m.key for m in METRICS if m.panel in {p.id for p in PANELS if p.methods}
)
PREFERENCE_KEYS = PREFERENCE_KEYS | {"log_odds_chosen", "eval_log_odds_chosen"}


def panels_for(method: str) -> tuple[ChartPanel, ...]:
    """The panels a job page of `method` draws."""
    return tuple(p for p in PANELS if not p.methods or method in p.methods)


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
