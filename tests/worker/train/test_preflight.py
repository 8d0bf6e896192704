"""Preflight trains a tiny twin one step, finds modules that break quantized, keeps them, and says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.config import demo_config
from contract.protocol import EventKind
from worker.train.preflight import run_preflight, twin_config
from worker.train.recipes.base import pattern_keeps

NAIVE_SKIP = ["altup", "lm_head"]


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _recorder() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    events: list[tuple[str, dict[str, Any]]] = []
    return events, lambda kind, payload: events.append((kind, payload))


@pytest.mark.parametrize("preset", ["tiny-gemma3n", "tiny-gemma3n-multimodal", "tiny-llama"])
def test_preflight_passes_with_the_recipe_and_reports_a_preflight_event(preset: str) -> None:
    cfg = demo_config()
    cfg.model.name = f"preset:{preset}"
    events, report = _recorder()
    result = run_preflight(cfg, report=report)
    assert result.ok, result.summary
    assert result.extra_keep == []
    assert "lm_head" in result.kept_in_full_precision
    assert result.summary.startswith("Preflight passed")
    assert result.seconds < 20
    assert events == [(str(EventKind.PREFLIGHT), result.payload())]
    assert set(events[0][1]) == {"ok", "summary", "kept_in_full_precision", "notes"}


@pytest.mark.parametrize(
    ("preset", "altup_prefix"),
    [("tiny-gemma3n", "model.layers"), ("tiny-gemma3n-multimodal", "model.language_model.layers")],
)
def test_preflight_discovers_that_altup_breaks_under_the_naive_list_and_keeps_it(
    preset: str, altup_prefix: str
) -> None:
    cfg = demo_config()
    cfg.model.name = f"preset:{preset}"
    events, report = _recorder()
    result = run_preflight(cfg, report=report, keep_override=NAIVE_SKIP)
    assert result.ok, result.summary
    assert result.extra_keep, "preflight should have added a pattern"
    for layer in range(4):
        for linear in ("prediction_coefs", "correction_coefs", "modality_router"):
            name = f"{altup_prefix}.{layer}.altup.{linear}"
            assert pattern_keeps(name, [*NAIVE_SKIP, *result.extra_keep]), name
    # nothing else got pulled out of 4-bit
    assert not pattern_keeps(f"{altup_prefix}.0.self_attn.q_proj", [*NAIVE_SKIP, *result.extra_keep])
    altup_notes = [n for n in result.notes if "AltUp" in n]
    assert altup_notes and "full precision" in altup_notes[0] and "can't be cast" in altup_notes[0]
    assert "after 1 fix" in result.summary
    assert events[-1][1]["ok"] is True


def test_preflight_finds_the_shape_error_of_a_quantized_correction_matrix() -> None:
    # prediction_coefs kept, correction_coefs packed: AltUp.correct() feeds the packed weight to F.linear.
    only_prediction = ["lm_head", r"model\.layers\.\d+\.altup\.prediction_coefs"]
    result = run_preflight(demo_config(), keep_override=only_prediction)
    assert result.ok, result.summary
    assert pattern_keeps("model.layers.2.altup.correction_coefs", [*only_prediction, *result.extra_keep])
    assert any("AltUp" in n and "shapes cannot be multiplied" in n for n in result.notes)


def test_preflight_with_an_empty_skip_list_also_finds_the_tied_head() -> None:
    # The facts' trap: an explicit list replaces the default, so leaving out lm_head quantizes the tied head.
    result = run_preflight(demo_config(), keep_override=[])
    assert result.ok, result.summary
    assert "lm_head" in result.extra_keep
    assert pattern_keeps("model.layers.0.altup.prediction_coefs", result.extra_keep)
    # one layer role at a time: the decoder's projections stay quantized
    assert not pattern_keeps("model.layers.0.self_attn.q_proj", result.extra_keep)
    assert "after 2 fix" in result.summary


def test_preflight_that_runs_out_of_attempts_fails_in_plain_words() -> None:
    events, report = _recorder()
    result = run_preflight(demo_config(), report=report, keep_override=NAIVE_SKIP, max_attempts=1)
    assert not result.ok
    assert "could not train one step" in result.summary
    assert "keep_in_full_precision" in result.summary
    assert events[-1][1]["ok"] is False


def test_preflight_checks_a_full_size_gemma3n_config_without_its_weights(tmp_path: Path) -> None:
    from transformers import Gemma3nConfig, Gemma3nTextConfig

    text = Gemma3nTextConfig(
        num_hidden_layers=30,
        intermediate_size=8192,
        num_kv_shared_layers=10,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 6,
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20,
    )
    config = Gemma3nConfig(text_config=text, architectures=["Gemma3nForConditionalGeneration"])
    config.save_pretrained(tmp_path)  # a local "model" with only its config: preflight needs nothing more
    cfg = demo_config()
    cfg.model.name = str(tmp_path)
    result = run_preflight(cfg)
    assert result.ok, result.summary
    assert "Gemma3nForConditionalGeneration" in result.summary
    assert "altup" in result.summary and "audio_tower" in result.summary


def test_the_twin_keeps_the_architecture_and_shrinks_its_dimensions() -> None:
    from transformers import LlamaConfig

    big = LlamaConfig(architectures=["LlamaForCausalLM"])
    twin = twin_config(big)
    assert twin.architectures == big.architectures
    assert (twin.hidden_size, twin.num_hidden_layers, twin.vocab_size) == (64, 4, 512)
    assert big.hidden_size == 4096  # the real config is left untouched
