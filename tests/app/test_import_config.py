"""Pasting a LLaMA-Factory or Axolotl YAML into the new-job form: converted for review, nothing created yet;
and the API keeps refusing such a file outright, each foreign key with its "did you mean"."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from tests.app.test_pages import Elements, job_count

FOREIGN = Path(__file__).resolve().parents[1] / "contract" / "foreign_configs"


def test_a_pasted_llama_factory_config_is_converted_for_review_and_nothing_is_created(
    client: TestClient,
) -> None:
    text = (FOREIGN / "llama-factory-lora-sft.yaml").read_text(encoding="utf-8")
    r = client.post("/jobs/new", data={"mode": "text", "config_text": text})
    assert r.status_code == 200
    assert job_count(client) == 0
    doc = Elements(r.text)
    notice = doc.text_by_id["import-notice"]
    assert "Converted from a LLaMA-Factory config" in notice
    assert "dataset_info.json" in doc.text_by_id["import-unmapped"]
    converted = doc.text_by_id["config-text"]
    assert converted.startswith("# converted from a LLaMA-Factory config")
    assert "name: meta-llama/Llama-3.2-1B-Instruct" in converted
    # the user reviews it: here, a model this offline machine has (the hub id is not in its cache)
    edited = converted.replace("meta-llama/Llama-3.2-1B-Instruct", "preset:tiny-llama").replace(
        "max_seq_len: 2048", "max_seq_len: 512"
    )
    created = client.post("/jobs/new", data={"mode": "text", "config_text": edited}, follow_redirects=False)
    assert created.status_code == 303, re.findall(r"<li>.*?</li>", created.text)
    job = client.get(created.headers["location"].replace("/jobs/", "/api/jobs/")).json()
    assert job["config"]["lora"]["r"] == 16 and job["config"]["training"]["grad_accum"] == 8


def test_our_own_config_with_a_typo_is_still_refused_not_converted(client: TestClient) -> None:
    r = client.post("/jobs/new", data={"mode": "text", "config_text": "learning_rate: 0.1\n"})
    assert r.status_code == 422
    assert "did you mean training.learning_rate?" in Elements(r.text).text_by_id["config-text-errors"]


def test_the_api_refuses_a_foreign_file_naming_the_fields_meant(client: TestClient) -> None:
    text = (FOREIGN / "axolotl-gemma3n-qlora.yaml").read_text(encoding="utf-8")
    r = client.post("/api/jobs", content=text, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert "did you mean model.name?" in problems["base_model"]
    assert "did you mean training.grad_accum?" in problems["gradient_accumulation_steps"]
