"""The one config schema: defaults run, bad values name their field."""

import json

import pytest

from contract.config import ConfigError, demo_config, load_config_text, parse_config


def test_an_empty_config_gets_runnable_defaults() -> None:
    cfg = parse_config({})
    assert cfg.model.name == "preset:tiny-gemma3n"
    assert cfg.quantization.method == "nf4"


def test_impossible_values_name_their_fields() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"lora": {"r": 0}, "training": {"learning_rate": -1, "batch_size": 0}})
    assert set(err.value.problems) == {"lora.r", "training.learning_rate", "training.batch_size"}
    assert "at least 1" in err.value.problems["lora.r"]


def test_unknown_keys_are_errors_that_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"learnign_rate": 1e-4}, "extra": 1})
    assert "training.learnign_rate" in err.value.problems
    assert "extra" in err.value.problems
    assert "unknown key" in err.value.problems["extra"]


def test_sequence_length_beyond_the_model_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"name": "preset:tiny-llama"}, "training": {"max_seq_len": 4096}})
    assert "at most 512" in err.value.problems["training.max_seq_len"]


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"name": "preset:nope"}})
    assert "preset:tiny-gemma3n" in err.value.problems["model.name"]


def test_yaml_and_json_give_the_same_config() -> None:
    data = demo_config().model_dump(mode="json")
    from_json = load_config_text(json.dumps(data), filename="job.json")
    import yaml

    from_yaml = load_config_text(yaml.safe_dump(data), filename="job.yaml")
    assert from_json == from_yaml == demo_config()


def test_unparseable_text_says_so() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text("model: [unclosed", filename="job.yaml")
    assert "cannot parse" in err.value.problems[""]


def test_compiling_without_checkpointing_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"torch_compile": "on", "gradient_checkpointing": False}})
    message = " ".join(err.value.problems.values())
    assert "gradient_checkpointing" in message and "auto or off" in message
    assert parse_config({"training": {"torch_compile": "off", "gradient_checkpointing": False}})
    assert parse_config({}).training.torch_compile == "auto"


def test_auto_compiles_only_long_single_gpu_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.train.speed.compile import COMPILE_MIN_STEPS, compile_wanted

    monkeypatch.setenv("TUNEBOARD_COMPILE", "0")  # a server's variable: no longer overrides the config
    assert compile_wanted("cuda", "auto", COMPILE_MIN_STEPS)
    assert compile_wanted("cuda", "auto", None)  # set by epochs: a long run
    assert not compile_wanted("cuda", "auto", COMPILE_MIN_STEPS - 1)
    assert not compile_wanted("cpu", "auto", None)
    assert compile_wanted("cpu", "on", 10) and not compile_wanted("cuda", "off", None)
    assert not compile_wanted("cuda", "auto", None, world_size=2)
    assert compile_wanted("cuda", "on", None, world_size=2)
