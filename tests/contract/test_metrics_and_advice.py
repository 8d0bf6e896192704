"""The metric table (keys, panels, labels, units) and the out-of-memory advice both sides give."""

from __future__ import annotations

from contract.advice import oom_advice
from contract.config import parse_config
from contract.metrics import CHARTED_KEYS, METRICS, PANELS, X_AXIS_KEYS, metric_label, panel_metrics
from contract.protocol import METRIC_KEYS


def test_the_protocol_keys_are_the_tables_keys() -> None:
    assert METRIC_KEYS == tuple(m.key for m in METRICS)
    assert len(set(METRIC_KEYS)) == len(METRIC_KEYS)
    for key in (
        "loss",
        "eval_loss",
        "grad_norm",
        "learning_rate",
        "tokens_per_second",
        "vram_peak_gb",
        "rss_gb",
    ):
        assert key in METRIC_KEYS


def test_every_metric_panel_exists_and_every_panel_draws_something() -> None:
    panel_ids = {p.id for p in PANELS}
    assert {m.panel for m in METRICS if m.panel is not None} == panel_ids
    assert all(panel_metrics(p.id) for p in PANELS)
    assert CHARTED_KEYS[:2] == ("loss", "eval_loss")


def test_the_x_axes_are_cumulative_counts_with_readable_labels() -> None:
    assert X_AXIS_KEYS == ("tokens_seen", "epoch")
    assert metric_label("tokens_seen") == "tokens seen"
    assert metric_label("something_new") == "something_new"


def test_out_of_memory_advice_names_the_settings_to_change_with_their_values() -> None:
    config = parse_config(
        {"training": {"batch_size": 2, "max_seq_len": 128, "gradient_checkpointing": False}}
    )
    advice = oom_advice(config, on_gpu=True)
    assert advice.startswith("out of GPU memory: ")
    assert "lower training.batch_size (now 2)" in advice and "training.max_seq_len (now 128)" in advice
    assert "turn on training.gradient_checkpointing" in advice
    assert "quantization.method" not in advice  # already quantized


def test_out_of_memory_advice_without_a_config_still_names_the_settings_to_change() -> None:
    advice = oom_advice(None, on_gpu=False)
    assert advice.startswith("out of memory (host RAM): lower training.batch_size and raise")
    assert "(now" not in advice  # no values to quote without a config
    unquantized = parse_config({"quantization": {"method": "none"}})
    assert oom_advice(unquantized, on_gpu=False).endswith("; or use quantization.method nf4")
