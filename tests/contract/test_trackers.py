"""`report_to` and `tracking` in the one config schema: names checked with a "did you mean", HF spellings."""

from __future__ import annotations

import pytest

from contract.config import ConfigError, config_to_dict, load_config_text, parse_config


def test_report_to_defaults_to_none_and_keeps_the_names_given_in_order() -> None:
    assert parse_config({}).report_to == []
    assert parse_config({"report_to": ["tensorboard", "wandb"]}).report_to == ["tensorboard", "wandb"]
    assert config_to_dict(parse_config({}))["tracking"] == {"project": "tuneboard", "run_name": ""}


@pytest.mark.parametrize(
    ("given", "means"),
    [
        ("wandb", ["wandb"]),  # one name, as Hugging Face's report_to takes it
        ("none", []),
        (["none"], []),
        ("all", ["wandb", "mlflow", "tensorboard", "trackio"]),
        (["MLflow", "mlflow", " TensorBoard "], ["mlflow", "tensorboard"]),  # case, spaces, duplicates
        (None, []),
    ],
)
def test_hugging_face_spellings_of_report_to_are_understood(given: object, means: list[str]) -> None:
    assert parse_config({"report_to": given}).report_to == means


@pytest.mark.parametrize(
    ("given", "meant"), [(["wandbb"], "wandb"), (["mlfow"], "mlflow"), ("tensorbord", "tensorboard")]
)
def test_a_misspelt_tracker_is_refused_naming_the_field_and_the_tracker_meant(
    given: object, meant: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"report_to": given})
    assert list(err.value.problems) == ["report_to"]
    assert f"did you mean {meant!r}?" in err.value.problems["report_to"]


def test_an_unknown_tracker_with_no_near_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text("report_to: [comet]\n")
    message = err.value.problems["report_to"]
    assert "unknown tracker 'comet'" in message and "did you mean" not in message
    assert "wandb, mlflow, tensorboard, trackio" in message


def test_tracking_names_are_checked_with_field_named_messages() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"tracking": {"project": "team/runs", "run_name": "two\nlines"}})
    assert "letters, digits" in err.value.problems["tracking.project"]
    assert "one line" in err.value.problems["tracking.run_name"]
    with pytest.raises(ConfigError) as err:
        parse_config({"tracking": {"entity": "me"}})
    assert "tracking.entity" in err.value.problems
