"""The events table's plain words (app/jobs/events.py): a preflight event names module families, not the
wall of escaped regular expressions its payload carries (20+ patterns on Gemma 3n)."""

from __future__ import annotations

from app.jobs.events import describe_event

GEMMA3N_KEPT = [
    *(
        rf"model\.language_model\.layers\.\d+\.altup\.{leaf}"
        for leaf in ("modality_router", "prediction_coefs")
    ),
    *(rf"model\.language_model\.layers\.\d+\.altup\.{leaf}" for leaf in ("correction_coefs",)),
    r"model\.language_model\.altup_projections\.\d+",
    r"model\.language_model\.altup_unembed_projections\.\d+",
    "lm_head",
    r"model\.audio_tower",
    r"model\.vision_tower",
    r"model\.embed_audio",
    r"model\.embed_vision",
]


def test_a_preflight_event_names_module_families_in_plain_words() -> None:
    text = describe_event(
        {
            "kind": "preflight",
            "payload": {"ok": True, "summary": "Preflight passed.", "kept_in_full_precision": GEMMA3N_KEPT},
        }
    )
    assert "\\" not in text and "\\d+" not in text  # no regular expressions
    assert text.startswith("preflight passed: Preflight passed. (kept in full precision: layers.N.altup, ")
    assert "altup_projections.N" in text and "and 2 more" in text
    assert len(text) < 200
