"""Worker-side short tasks and the model card: what a person taking the adapter away needs to know."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.config import JobConfig, config_to_dict
from contract.tasks import MERGE_STATUS, MERGED_DIR, merge_refusal
from tests.worker.training_runs import REPO, child_env
from worker.train.model_card import render_model_card


def card(method: str, **overrides: object) -> str:
    cfg = JobConfig.model_validate(
        {
            "name": "reverse words",
            "model": {"name": "preset:tiny-llama", "revision": "abc123"},
            "quantization": {"method": method},
            "training": {"seed": 7},
        }
    )
    kwargs: dict[str, object] = {
        "cfg": cfg,
        "base_model": "/cache/presets/tiny-llama-v2",
        "dataset_fingerprint": "f" * 64,
        "dataset_format": "messages",
        "num_train_rows": 29,
        "num_eval_rows": 3,
        "metrics": {"loss": 1.25, "eval_loss": float("nan"), "steps": 4},
        "preflight_notes": ["Preflight passed in 0.3 s: a tiny twin trained a step."],
        "kept_in_full_precision": ["lm_head"] if method != "none" else [],
        "command": "tuneboard train tuneboard_config.json",
    }
    kwargs.update(overrides)
    return render_model_card(**kwargs)  # type: ignore[arg-type]


def test_the_model_card_states_base_config_data_metrics_preflight_and_the_command() -> None:
    text = card("nf4")
    assert "base_model: preset:tiny-llama" in text and "revision `abc123`" in text
    assert "/cache/presets/tiny-llama-v2" in text
    assert "f" * 64 in text and "29 train, 3 eval" in text
    assert "- loss: 1.25" in text and "- eval_loss: nan" in text and "- steps: 4" in text
    assert "Preflight passed in 0.3 s" in text
    assert "tuneboard train tuneboard_config.json" in text and "seed 7" in text
    config_json = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(config_json)["training"]["seed"] == 7  # the full config, parseable as written
    assert "- `lm_head`" in text and "qlora" in text and "BitsAndBytesConfig" in text


def test_a_card_for_an_unquantized_base_says_so_and_shows_how_to_merge() -> None:
    text = card("none")
    assert "qlora" not in text and "not quantized" in text and "merge_and_unload()" in text
    assert "BitsAndBytesConfig" not in text
    assert "## Preflight notes" in card("none", preflight_notes=[])  # the section is there even when empty


def test_merging_is_refused_for_every_quantized_method_with_the_reason() -> None:
    assert merge_refusal("none") is None
    for method, bits in (("nf4", "4-bit"), ("fp4", "4-bit"), ("int8", "8-bit")):
        reason = merge_refusal(method)
        assert reason is not None and bits in reason and "loses precision" in reason
        assert "quantization.method none" in reason and "--format merged" in reason  # where to go instead


def test_the_merge_task_refuses_a_quantized_run_before_loading_any_model(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    cfg = config_to_dict(JobConfig.model_validate({"model": {"name": "preset:tiny-llama"}}))
    task_input = tmp_path / "task-input.json"  # the job's stored config, as the app hands it over
    task_input.write_text(json.dumps(cfg))
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "tuneboard_quantization.json").write_text(
        json.dumps({"method": "nf4", "llm_int8_skip_modules": ["lm_head"], "dtype": "float32"})
    )
    # the real entry point's main(), in a fresh interpreter that then reports whether torch got loaded
    probe = (
        "import sys; from worker.tasks.merge import main; "
        "code = main([sys.argv[1], '--config', sys.argv[2]]); print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path), str(task_input)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # exit code 2 (refused), and refused before torch was imported: the check costs nothing on a large model
    assert result.stdout.strip().splitlines()[-1] == "2 False"
    status = json.loads((tmp_path / MERGE_STATUS).read_text())
    assert status["state"] == "failed" and "loses precision" in status["message"]
    assert not (tmp_path / MERGED_DIR).exists()


def test_the_merge_task_refuses_a_run_without_an_adapter(tmp_path: Path) -> None:
    task_input = tmp_path / "task-input.json"
    task_input.write_text(json.dumps(config_to_dict(JobConfig())))
    result = subprocess.run(
        [sys.executable, "-m", "worker.tasks.merge", str(tmp_path), "--config", str(task_input)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    status = json.loads((tmp_path / MERGE_STATUS).read_text())
    assert status["state"] == "failed" and "no finished adapter" in status["message"]


@pytest.mark.training
def test_the_generation_prompt_goes_through_the_chat_template_unless_raw() -> None:
    from transformers import AutoTokenizer

    from tests.worker.takeaway_run import mergeable_run
    from worker.tasks.generate import prompt_text

    tok = AutoTokenizer.from_pretrained(str(mergeable_run().run_dir.adapter))
    wrapped = prompt_text(tok, "Reverse the letters: tune", raw=False)
    assert wrapped.startswith("<|begin_of_text|>") and "<|start_header_id|>user" in wrapped
    assert wrapped.rstrip().endswith("<|end_header_id|>")  # the assistant turn is opened for the answer
    assert prompt_text(tok, "Reverse the letters: tune", raw=True) == "Reverse the letters: tune"


def test_the_generate_task_ends_with_an_error_line_when_the_run_has_no_adapter(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hello", encoding="utf-8")
    task_input = tmp_path / "task-input.json"
    task_input.write_text(json.dumps(config_to_dict(JobConfig())))
    argv = [str(tmp_path), "--config", str(task_input), "--prompt-file", str(prompt)]
    result = subprocess.run(
        [sys.executable, "-m", "worker.tasks.generate", *argv],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert "no finished adapter" in last["error"] and "succeeded" in last["error"]


@pytest.mark.training
def test_earlier_turns_are_rendered_before_the_prompt_by_the_chat_template() -> None:
    from transformers import AutoTokenizer

    from tests.worker.takeaway_run import mergeable_run
    from worker.tasks.generate import prompt_text

    tok = AutoTokenizer.from_pretrained(str(mergeable_run().run_dir.adapter))
    history = [
        {"role": "user", "content": "Reverse the letters: tune"},
        {"role": "assistant", "content": "enut"},
    ]
    alone = prompt_text(tok, "And now: board", raw=False)
    wrapped = prompt_text(tok, "And now: board", raw=False, history=history)
    ids = tok(wrapped, add_special_tokens=False)["input_ids"]

    def at(sub: list[int]) -> int:
        return next(i for i in range(len(ids) - len(sub) + 1) if ids[i : i + len(sub)] == sub)

    # token level: the earlier user turn, the adapter's answer as the assistant's turn, then the new prompt
    turn = [
        tok(f"{role}<|end_header_id|>\n\n{text}", add_special_tokens=False)["input_ids"]
        for role, text in (
            ("user", "Reverse the letters: tune"),
            ("assistant", "enut"),
            ("user", "And now: board"),
        )
    ]
    positions = [at(t) for t in turn]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert len(ids) > len(tok(alone, add_special_tokens=False)["input_ids"])
    assert wrapped.rstrip().endswith("<|start_header_id|>assistant<|end_header_id|>")
    raw = prompt_text(tok, "And now: board", raw=True, history=history)
    assert raw == "Reverse the letters: tune\nenut\nAnd now: board"


def test_bad_decoding_arguments_are_refused_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.tasks import generate

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("hi")
    base = [str(tmp_path), "--config", str(tmp_path / "c.json"), "--prompt-file", str(prompt)]
    for extra, says in (
        (["--temperature", "2.5"], "--temperature must be between 0 and 2"),
        (["--top-p", "0"], "--top-p must be above 0 and at most 1"),
        (["--seed", "-3"], "--seed must be between 0"),
    ):
        assert generate.main(base + extra) == 2, extra
        assert says in json.loads(capsys.readouterr().out)["error"]
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{"role": "system", "content": "x"}]))
    assert generate.main(base + ["--history-file", str(history)]) == 2
    with pytest.raises(ValueError, match="turn 0 of the history"):
        generate.read_history(history)
    assert generate.sampling_kwargs(0.0, 0.5) == {"do_sample": False}
    assert generate.sampling_kwargs(0.7, 0.9) == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
    }
