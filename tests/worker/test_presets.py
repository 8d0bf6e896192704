"""Preset models are built locally, cached, and come with chat templates that mask assistant tokens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contract.catalog import PRESET_DATASETS, PRESET_MODELS
from worker.presets import PRESET_VERSION, READY_MARKER, generate_dataset, preset_model_dir

CHAT = [
    {"role": "user", "content": "Reverse the letters: abc"},
    {"role": "assistant", "content": "cba"},
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("presets")


@pytest.mark.parametrize("name", sorted(PRESET_MODELS))
def test_each_catalog_preset_builds_a_loadable_model_directory(cache: Path, name: str) -> None:
    from transformers import AutoConfig

    path = preset_model_dir(name, cache)
    assert (path / READY_MARKER).is_file()
    assert (path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == [PRESET_MODELS[name].architecture]
    text = config.get_text_config()
    assert text.hidden_size == PRESET_MODELS[name].hidden_size
    assert text.num_hidden_layers == PRESET_MODELS[name].num_layers
    assert text.vocab_size == PRESET_MODELS[name].vocab_size
    assert text.hidden_size % 64 == 0  # bitsandbytes packs blocks of 64


def test_a_second_call_reuses_the_cached_preset_without_rebuilding(cache: Path) -> None:
    first = preset_model_dir("tiny-llama", cache)
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    started = time.perf_counter()
    second = preset_model_dir("tiny-llama", cache)
    assert second == first
    assert time.perf_counter() - started < 0.05
    assert weights.stat().st_mtime_ns == stamp
    # no temporary build directories are left behind
    assert not [p for p in cache.iterdir() if p.name.startswith(".building-")]


def test_concurrent_builders_all_get_the_same_complete_preset(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: preset_model_dir("tiny-llama", tmp_path), range(3)))
    assert len(set(paths)) == 1
    assert (paths[0] / READY_MARKER).is_file() and (paths[0] / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # losers cleaned up their temp dirs


@pytest.mark.slow  # several Python processes each building a model: ~7 s on 2 cores
def test_concurrent_builder_processes_race_safely_to_one_complete_preset(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys; from pathlib import Path; from worker.presets import preset_model_dir; "
    code += "print(preset_model_dir('tiny-gemma3n', Path(sys.argv[1])))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1]
    assert [p.name for p in tmp_path.iterdir()] == [Path(outputs[0]).name]
    assert (Path(outputs[0]) / READY_MARKER).is_file()


def test_a_builder_that_loses_the_rename_race_keeps_the_winners_preset(tmp_path: Path) -> None:
    from worker.presets import _build_into

    winner = preset_model_dir("tiny-llama", tmp_path)
    stamp = (winner / "model.safetensors").stat().st_mtime_ns
    _build_into("tiny-llama", tmp_path, winner)  # a second builder finishing after the first renamed
    assert (winner / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [winner.name]


def test_an_incomplete_preset_directory_is_rebuilt(tmp_path: Path) -> None:
    stale = tmp_path / f"tiny-llama-v{PRESET_VERSION}"
    stale.mkdir()
    (stale / "config.json").write_text("{half written", encoding="utf-8")
    path = preset_model_dir("tiny-llama", tmp_path)
    assert path == stale
    assert (path / READY_MARKER).is_file()


def test_the_cache_dir_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEBOARD_CACHE_DIR", str(tmp_path))
    assert preset_model_dir("tiny-llama").parent == tmp_path / "presets"


def test_an_unknown_preset_name_lists_the_available_ones(cache: Path) -> None:
    with pytest.raises(ValueError, match="tiny-gemma3n"):
        preset_model_dir("huge-model", cache)


@pytest.mark.parametrize(
    ("name", "turn_end"),
    [
        ("tiny-gemma3n", "<end_of_turn>"),
        ("tiny-gemma3n-multimodal", "<end_of_turn>"),
        ("tiny-llama", "<|eot_id|>"),
    ],
)
def test_preset_chat_templates_render_and_mask_exactly_the_assistant_reply(
    cache: Path, name: str, turn_end: str
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(preset_model_dir(name, cache))
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert "Reverse the letters: abc" in text and turn_end in text
    enc = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(masked) == "cba" + turn_end
    prompt = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt)


def test_preset_tokenizers_spell_every_letter_as_its_own_token(cache: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(preset_model_dir("tiny-gemma3n", cache))
    ids = tok("abc", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    assert max(ids) < PRESET_MODELS["tiny-gemma3n"].vocab_size


@pytest.mark.parametrize("name", sorted(PRESET_DATASETS))
def test_generated_datasets_are_deterministic_and_match_their_catalog_format(name: str) -> None:
    rows = generate_dataset(name, 50, seed=3)
    assert rows == generate_dataset(name, 50, seed=3)
    assert rows != generate_dataset(name, 50, seed=4)
    fmt = PRESET_DATASETS[name].format
    expected = {
        "messages": {"messages"},
        "prompt_completion": {"prompt", "completion"},
        "text": {"text"},
        "preference": {"prompt", "chosen", "rejected"},
    }[fmt]
    assert all(set(row) == expected for row in rows)


def test_reverse_letters_answers_are_the_reversed_words() -> None:
    for row in generate_dataset("reverse-letters", 20):
        user, assistant = row["messages"]
        word = user["content"].rsplit(" ", 1)[1]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert assistant["content"] == word[::-1]


def test_country_capitals_rows_ask_for_a_capital_and_cover_the_lookup() -> None:
    from worker.presets import CAPITALS

    rows = generate_dataset("country-capitals", 256)
    asked = set()
    for row in rows:
        user, assistant = row["messages"]
        country = user["content"].removeprefix("Capital of ").removesuffix("?")
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert assistant["content"] == CAPITALS[country]
        asked.add(country)
    assert asked == set(CAPITALS)  # the demo's 256 rows teach every country


def test_the_gemma_preset_starts_with_soft_attention_and_loud_sublayers(cache: Path) -> None:
    """The init LoRA needs (measured: stock norms leave the demo's loss above ln(vocab) after 30 steps)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        preset_model_dir("tiny-gemma3n", cache), attn_implementation="eager"
    )
    ids = torch.tensor([[2, *range(100, 140)]])
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    late = torch.stack(out.attentions)[..., 20:, :]  # queries with at least 20 tokens to choose from
    # stock init: ~0.7 of each query's weight on one token; soft attention spreads it
    assert late.max(dim=-1).values.mean() < 0.35
    layer = model.model.layers[0]
    assert torch.all(layer.post_attention_layernorm.weight == 4.0)
    assert torch.all(layer.self_attn.q_norm.weight == 0.3)


def test_uppercase_and_counting_rows_follow_their_rule() -> None:
    for row in generate_dataset("uppercase-completion", 10):
        word = row["prompt"].split(": ", 1)[1].removesuffix(" ->")
        assert row["completion"] == " " + word.upper()
    for row in generate_dataset("counting-text", 10):
        head, numbers = row["text"].split(": ")
        values = [int(v) for v in numbers.split()]
        assert values[0] == int(head.rsplit(" ", 1)[1])
        assert values == list(range(values[0], values[0] + len(values)))
