"""Uploads say what was understood (layout, conversion, rows, columns used, ignored and held back), take a
column mapping from the form, refuse unsupported layouts by counting every row, and the worker reads the
stored upload the way the check did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from contract.config import parse_config
from worker.train.data import load_rows

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"

# file → (layout, rows used, columns ignored, held back)
ACCEPTED: dict[str, tuple[str, int, list[str], list[str]]] = {
    "openai_chat_tools.jsonl": ("messages", 16, [], []),
    "alpaca.json": ("alpaca", 16, [], []),
    "alpaca.csv": ("alpaca", 16, ["source"], []),
    "sharegpt.json": ("sharegpt", 16, [], []),
    "prompt_completion.jsonl": ("prompt_completion", 16, [], []),
    "prompt_completion_chat.jsonl": ("prompt_completion_chat", 16, [], []),
    "kto.jsonl": ("messages", 8, [], ["label"]),
    "plain.txt": ("text", 16, [], []),
    "messages_json_strings.parquet": ("messages", 16, ["source"], []),
    "messages_structs.parquet": ("messages", 16, ["source"], []),
    "preference.jsonl": ("preference", 16, [], []),
}


def _upload(client: TestClient, name: str, **data: str) -> Any:
    content = (FIXTURES / name).read_bytes()
    return client.post("/api/datasets", files={"file": (name, content)}, data=data or None)


def test_every_layout_uploads_and_the_answer_and_page_say_what_was_understood(client: TestClient) -> None:
    for name, (layout, rows, ignored, held) in ACCEPTED.items():
        r = _upload(client, name)
        assert r.status_code == 201, (name, r.text)
        made = r.json()
        intake = made["intake"]
        assert (intake["layout"], made["rows"], intake["columns_ignored"]) == (layout, rows, ignored), name
        assert [h["column"] for h in intake["held_back"]] == held, name
        assert client.get(f"/api/datasets/{made['id']}").json()["intake"] == intake
        page = client.get(f"/datasets/{made['id']}").text
        assert f'data-layout="{layout}"' in page and "What was understood" in page, name
        for column in intake["columns_used"]:
            assert f"<code>{column}</code>" in page, (name, column)
    kto = next(d for d in client.get("/api/datasets").json() if d["filename"] == "kto.jsonl")
    page = client.get(f"/datasets/{kto['id']}").text
    assert "leaves out the 8 row(s) labelled false" in page
    pref = next(d for d in client.get("/api/datasets").json() if d["filename"] == "preference.jsonl")
    intake = client.get(f"/api/datasets/{pref['id']}").json()["intake"]
    assert pref["format"] == "preference" and "method: dpo or orpo" in intake["conversion"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("images.jsonl", "column 'images' holds images: Tuneboard trains on text only for now"),
        ("question_answer.csv", "not supported: a row with columns 'question', 'answer', 'id'"),
    ],
)
def test_unsupported_layouts_are_refused_in_plain_words_counting_every_row(
    client: TestClient, settings: Settings, name: str, fragment: str
) -> None:
    r = _upload(client, name)
    assert r.status_code == 422
    body = r.json()
    [group] = body["groups"]
    assert group["kind"] == "layout" and group["count"] == body["total"] == (
        3 if name == "images.jsonl" else 16
    )
    assert fragment in body["detail"] and "nothing was stored" in body["detail"]
    assert not settings.datasets_dir.exists() or not any(settings.datasets_dir.glob("*/data.jsonl"))


def test_a_mapping_from_the_form_is_applied_stored_and_used_by_the_worker(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = json.dumps({"prompt": "question", "response": "answer"})
    r = _upload(client, "question_answer.csv", columns=mapping)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["intake"]["mapping"] == {"prompt": "question", "response": "answer"}
    assert made["intake"]["columns_ignored"] == ["id"]
    unmapped_id = made["id"]
    # the same bytes with another mapping are another dataset
    other = _upload(client, "question_answer.csv", columns='{"prompt": "answer", "response": "question"}')
    assert other.status_code == 201 and other.json()["id"] != unmapped_id
    job = client.post("/api/jobs", json={"name": "mapped", "dataset": {"source": made["source"]}})
    assert job.status_code == 201, job.text
    cfg = parse_config(client.get(f"/api/jobs/{job.json()['id']}").json()["config"])
    monkeypatch.setenv("TUNEBOARD_DATASETS_DIR", str(settings.datasets_dir))
    rows = load_rows(cfg)
    assert rows[0] == {
        "messages": [{"role": "user", "content": "Reverse: apple"}, {"role": "assistant", "content": "elppa"}]
    }
    preview = client.get(f"/api/datasets/{made['id']}/preview", params={"model": "preset:tiny-gemma3n"})
    assert preview.status_code == 200, preview.text  # the preview reads the upload with its mapping too
    trained = [s["text"] for s in preview.json()["rows"][0]["segments"] if s["kind"] == "trained"]
    assert trained == ["elppa<end_of_turn>"]
    bad = _upload(client, "question_answer.csv", columns='{"prompt": "question"}')
    assert bad.status_code == 422 and "dataset.columns" in bad.json()["detail"]
    assert "response" in bad.json()["detail"]


def test_the_upload_form_offers_the_mapping_and_shows_problems_grouped(client: TestClient) -> None:
    page = client.get("/datasets").text
    assert 'name="columns"' in page and "dataset_info.json" in page
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    twice = {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}
    content = "".join(json.dumps(r) + "\n" for r in [good, *[twice] * 300]) + "{oops\n"
    r = client.post("/datasets", files={"file": ("many.jsonl", content.encode())})
    assert r.status_code == 422
    assert "301 bad rows, 2 kinds" in r.text
    assert 'id="problem-groups"' in r.text and "<strong>300</strong> rows: turn order" in r.text


def test_the_preview_of_an_uploaded_tool_dataset_marks_the_trained_call(client: TestClient) -> None:
    made = _upload(client, "sharegpt.json").json()
    r = client.get(
        f"/api/datasets/{made['id']}/preview", params={"model": "preset:tiny-gemma3n", "max_seq_len": 512}
    )
    assert r.status_code == 200, r.text
    first = r.json()["rows"][0]["segments"]
    trained = "".join(s["text"] for s in first if s["kind"] == "trained")
    prompt = "".join(s["text"] for s in first if s["kind"] == "prompt")
    assert trained.startswith('<tool_call>{"name": "get_weather"')
    assert '{"temp": 10}' in prompt and "Weather in Paris?" in prompt


def test_the_job_form_takes_the_mapping_as_text_and_shows_it_again(client: TestClient) -> None:
    from tests.app.test_pages import form_data

    made = _upload(
        client, "question_answer.csv", columns='{"prompt": "question", "response": "answer"}'
    ).json()
    data = form_data(dataset__source=made["source"], dataset__columns="prompt: question\nresponse: answer")
    r = client.post("/jobs/new", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].rsplit("/", 1)[1]
    config = client.get(f"/api/jobs/{job_id}").json()["config"]
    assert config["dataset"]["columns"]["prompt"] == "question"
    # clone: the form shows the stored mapping, and posting it back keeps it
    page = client.get(f"/jobs/new?from={job_id}").text
    assert "question" in page.split('id="f-dataset-columns"', 1)[1].split(">", 1)[0]
    again = client.post("/jobs/new", data=form_data(config), follow_redirects=False)
    assert again.status_code == 303, again.text
    bad = client.post("/jobs/new", data=form_data(dataset__columns='{"prompt": "question"}'))
    assert bad.status_code == 422 and "the column holding the answers" in bad.text


def test_the_collector_is_off_while_checks_run_and_back_after_the_last() -> None:
    import gc

    from app.datasets.intake import no_cyclic_gc

    assert gc.isenabled()
    with no_cyclic_gc():
        assert not gc.isenabled()
        with no_cyclic_gc():  # a second, concurrent check
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first one still runs
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_cyclic_gc():
        raise RuntimeError("a check that fails")
    assert gc.isenabled()


def test_preference_data_is_previewed_side_by_side_with_tokens_and_cuts(client: TestClient) -> None:
    made = _upload(client, "preference.jsonl").json()
    r = client.get(
        f"/api/datasets/{made['id']}/preview", params={"model": "preset:tiny-llama", "max_seq_len": 16}
    )
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["format"] == "preference" and preview["layout"] == "paired"
    first = preview["rows"][0]
    assert first["prompt"] and first["chosen"] != first["rejected"]
    assert first["chosen_tokens"] > 0 and first["rejected_tokens"] > 0
    assert first["chosen_cut"]["prompt_tokens_dropped"] > 0  # 16 tokens cannot hold the chat-template prompt
    page = client.get(
        f"/datasets/{made['id']}/partials/preview", params={"model": "preset:tiny-llama", "max_seq_len": 16}
    )
    assert 'id="preference-preview"' in page.text and "method: dpo" in page.text
    assert first["chosen"] in page.text and first["rejected"] in page.text


def test_a_method_that_does_not_fit_the_data_is_refused_when_the_job_is_created(client: TestClient) -> None:
    pairs = _upload(client, "preference.jsonl").json()["source"]
    sft = client.post("/api/jobs", json={"name": "pairs as sft", "dataset": {"source": pairs}})
    assert sft.status_code == 422
    assert "method: dpo" in sft.json()["problems"]["method"]
    chats = _upload(client, "sharegpt.json").json()["source"]
    dpo = client.post(
        "/api/jobs", json={"name": "chats as dpo", "method": "dpo", "dataset": {"source": chats}}
    )
    assert dpo.status_code == 422 and "method: sft" in dpo.json()["problems"]["method"]
    assert client.get("/api/jobs").json() == []
    fits = client.post(
        "/api/jobs", json={"name": "pairs as dpo", "method": "dpo", "dataset": {"source": pairs}}
    )
    assert fits.status_code == 201, fits.text
    preset = client.post(
        "/api/jobs", json={"method": "orpo", "dataset": {"source": "preset:reverse-letters"}}
    )
    assert preset.status_code == 422 and "method" in preset.json()["problems"]
