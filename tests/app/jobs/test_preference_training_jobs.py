"""Preference tuning through the app (training): an SFT job, then a DPO job from its adapter, by the API.

No fakes: the real app on a live uvicorn, its scheduler, the real training child in 4-bit on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.waiting import wait_until


@pytest.fixture
def settings(tmp_path, database_url: str | None) -> Settings:  # type: ignore[no-untyped-def]
    """The real worker module on one CPU slot."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        scheduler_enabled=True,
        cpu_slots=1,
        gpu_slots="",
    )


def _finished(client: httpx.Client, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = wait_until(
        lambda: client.get(f"/api/jobs/{job_id}").json(),
        300,
        f"job {job_id} to end",
        0.5,
        until=lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
    )
    assert job["status"] == "succeeded", (job["failure_reason"], job.get("stderr_tail"))
    return job


def _adapter(settings: Settings, job_id: int) -> Path:
    """The adapter folder of a finished job's run."""
    (run,) = settings.runs_dir.glob(f"job-{job_id}-*")
    return run / "adapter"


def _shout_margin(adapter: Path, words: list[str]) -> float:
    """Mean log p(UPPER) − log p(lower) over fresh words, with the adapter loaded by plain PEFT on the
    4-bit base (the same quantization the run recorded)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    q = json.loads((adapter / "tuneboard_quantization.json").read_text(encoding="utf-8"))
    base = AutoModelForCausalLM.from_pretrained(
        q["base_model"],
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q["method"],
            bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=q["llm_int8_skip_modules"],
        ),
        dtype=torch.float32,
    )
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tok = AutoTokenizer.from_pretrained(str(adapter))
    gaps = []
    for word in words:
        prompt = [{"role": "user", "content": f"Shout the word: {word}"}]
        scores = []
        for answer in (word.upper(), word):
            p = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
            full = tok.apply_chat_template(
                prompt + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=True
            )
            ids = torch.tensor([full["input_ids"]])
            n = len(p["input_ids"])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            scores.append(float(logp[n - 1 :].gather(-1, ids[0, n:, None]).sum()))
        gaps.append(scores[0] - scores[1])
    return sum(gaps) / len(gaps)


@pytest.mark.training
def test_an_sft_job_then_dpo_from_its_adapter_prefers_the_taught_rule(live_server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        sft = client.get("/api/presets").json()["demo"]
        sft["training"].update({"max_steps": 8, "eval_steps": 0, "save_steps": 8})
        sft_id = client.post("/api/jobs", json=sft).json()["id"]
        _finished(client, sft_id)

        dpo = json.loads(json.dumps(sft))
        dpo.update(
            {
                "name": "dpo from sft",
                "method": "dpo",
                "init_adapter": f"job:{sft_id}",
                "preference": {"beta": 0.1},
            }
        )
        dpo["dataset"] = {"source": "preset:uppercase-preference", "num_rows": 96, "eval_fraction": 0.25}
        dpo["training"].update(
            {
                "max_steps": 12,
                "learning_rate": 5e-3,
                "batch_size": 8,
                "max_seq_len": 64,
                "eval_steps": 6,
                "save_steps": 6,
            }
        )
        created = client.post("/api/jobs", json=dpo)
        assert created.status_code == 201, created.text
        dpo_id = created.json()["id"]
        job = _finished(client, dpo_id)

        series = client.get(f"/api/jobs/{dpo_id}/metrics", params={"max_points": 2000}).json()["series"]
        accuracy = [v for _, v in series["eval_rewards/accuracies"]]
        margins = [v for _, v in series["eval_rewards/margins"]]
        assert accuracy[-1] >= 0.8, accuracy  # held-out pairs
        assert 0 < margins[0] < margins[-1], margins
        assert len(series["rewards/accuracies"]) == job["total_steps"]
        events = client.get(f"/api/jobs/{dpo_id}/events", params={"limit": 500}).text
        assert "Starting from the adapter" in events and "computed once from the starting adapter" in events

        words = ["plum", "quirk", "zebra", "mango", "vivid", "joke"]  # not in the generated pairs
        before = _shout_margin(_adapter(live_server.settings, sft_id), words)
        after = _shout_margin(_adapter(live_server.settings, dpo_id), words)
        assert after > 0 and after > before + 1.0, (before, after)
