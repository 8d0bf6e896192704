"""The preference axis of the one config schema, and how preference rows are read and refused."""

from __future__ import annotations

from typing import Any

import pytest

from contract.config import ConfigError, config_to_dict, parse_config
from contract.metrics import PREFERENCE_KEYS, panels_for
from contract.preference import (
    METHOD_FIELDS,
    PAIRED,
    UNPAIRED,
    PreferenceConfig,
    init_adapter_job,
    layout_refusal,
    preference_layout,
    preference_row_problem,
    read_labelled,
    read_pair,
)


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def test_method_defaults_to_sft_and_takes_the_preference_section() -> None:
    assert parse_config({}).method == "sft"
    cfg = parse_config({"method": "dpo", "preference": {"beta": 0.5, "loss_type": "ipo"}})
    assert (cfg.method, cfg.preference.beta, cfg.preference.loss_type) == ("dpo", 0.5, "ipo")
    # the canonical form carries the new keys, and reads back the same
    assert parse_config(config_to_dict(cfg)) == cfg


def test_bad_preference_values_name_their_field() -> None:
    assert "preference.beta" in _problems({"method": "dpo", "preference": {"beta": 0}})
    assert "method" in _problems({"method": "ppo"})
    assert "preference.bogus" in _problems({"preference": {"bogus": 1}})
    problems = _problems({"method": "kto", "preference": {"loss_type": "hinge"}})
    assert "DPO setting" in problems["preference.loss_type"]
    problems = _problems({"method": "orpo", "preference": {"reference": "live"}})
    assert "no reference model" in problems["preference.reference"]
    problems = _problems({"method": "dpo", "preference": {"loss_type": "ipo", "label_smoothing": 0.1}})
    assert "preference.label_smoothing" in problems


def test_init_adapter_is_a_job_reference_or_a_path() -> None:
    assert parse_config({"init_adapter": "job:12"}).init_adapter == "job:12"
    assert init_adapter_job("job:12") == 12
    assert init_adapter_job("runs/job-3/adapter") is None
    assert parse_config({"init_adapter": "  "}).init_adapter is None
    assert "job:<id>" in _problems({"init_adapter": "job:twelve"})["init_adapter"]


def test_every_method_names_only_fields_of_the_section() -> None:
    known = set(PreferenceConfig.model_fields)
    for method, fields in METHOD_FIELDS.items():
        assert set(fields) <= known, method
    assert "loss_type" in METHOD_FIELDS["dpo"] and "loss_type" not in METHOD_FIELDS["kto"]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {"instruction": "Hi?", "input": "", "chosen": "Hello.", "rejected": "Go away."},
        {
            "conversations": [{"from": "human", "value": "Hi?"}],
            "chosen": {"from": "gpt", "value": "Hello."},
            "rejected": {"from": "gpt", "value": "Go away."},
        },
        {  # TRL's implicit prompt: whole conversations sharing everything but the answer
            "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
        },
    ],
)
def test_paired_layouts_read_to_the_same_messages(row: dict[str, Any]) -> None:
    assert preference_layout(row) == PAIRED
    prompt, chosen, rejected = read_pair(row)
    assert prompt == [{"role": "user", "content": "Hi?"}]
    assert chosen == [{"role": "assistant", "content": "Hello."}]
    assert rejected == [{"role": "assistant", "content": "Go away."}]


def test_labelled_rows_read_for_kto() -> None:
    row = {"prompt": "Hi?", "completion": "Hello.", "label": "true"}
    assert preference_layout(row) == UNPAIRED
    assert read_labelled(row) == (
        [{"role": "user", "content": "Hi?"}],
        [{"role": "assistant", "content": "Hello."}],
        True,
    )
    messages = {
        "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}],
        "label": 0,
    }
    assert read_labelled(messages)[2] is False


@pytest.mark.parametrize(
    ("row", "layout", "words"),
    [
        ({"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}, PAIRED, "same answer"),
        ({"prompt": "Hi?", "chosen": "", "rejected": "No."}, PAIRED, "chosen is empty"),
        ({"prompt": "Hi?", "chosen": "Yes."}, PAIRED, "chosen and rejected"),
        ({"prompt": "Hi?", "completion": "Yes.", "label": "maybe"}, UNPAIRED, "true or false"),
        ({"chosen": "Yes.", "rejected": "No."}, PAIRED, "no prompt column"),
    ],
)
def test_bad_rows_say_what_is_wrong(row: dict[str, Any], layout: str, words: str) -> None:
    problem = preference_row_problem(row, layout)
    assert problem is not None and words in problem, problem


def test_a_mismatched_method_is_refused_with_the_method_that_fits() -> None:
    assert layout_refusal("dpo", PAIRED) is None
    assert layout_refusal("kto", PAIRED) is None  # KTO reads a pair as one good and one bad answer
    sft_on_pairs = layout_refusal("sft", PAIRED)
    assert sft_on_pairs is not None and "method: dpo" in sft_on_pairs
    dpo_on_plain = layout_refusal("dpo", None)
    assert dpo_on_plain is not None and "method: sft" in dpo_on_plain
    dpo_on_labels = layout_refusal("dpo", UNPAIRED)
    assert dpo_on_labels is not None and "method: kto" in dpo_on_labels


def test_preference_charts_show_only_on_preference_jobs() -> None:
    sft = {p.id for p in panels_for("sft")}
    dpo = {p.id for p in panels_for("dpo")}
    assert "reward_accuracy" in dpo and "reward_accuracy" not in sft
    assert "kl" in {p.id for p in panels_for("kto")} and "kl" not in dpo
    assert {"rewards/accuracies", "eval_rewards/margins", "kl", "logps/chosen"} <= PREFERENCE_KEYS
