"""Dataset uploads: checked line by line before anything is stored, capped while streaming, stored once."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.scheduler.launcher import LaunchSpec
from app.scheduler.runner import make_launcher
from app.settings import Settings
from contract.catalog import PRESET_DATASETS
from contract.config import parse_config
from tests.app.conftest import LiveServer
from tests.waiting import wait_until
from worker.train.data import detect_format, load_rows, validate_rows

USER = {"role": "user", "content": "Reverse the letters: abc"}
ASSISTANT = {"role": "assistant", "content": "cba"}
CHAT = {"messages": [USER, ASSISTANT]}


def _jsonl(*lines: Any) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def _upload(client: TestClient, filename: str, content: bytes, **data: str) -> Any:
    return client.post("/api/datasets", files={"file": (filename, content)}, data=data or None)


def _stored(settings: Settings) -> list[str]:
    """Everything under the datasets dir and the temp dir (where uploads stream to)."""
    found = []
    for root in (settings.datasets_dir, settings.data_dir / "tmp"):
        if root.exists():
            found += [str(p.relative_to(settings.data_dir)) for p in root.rglob("*")]
    return found


def _uploads(client: TestClient) -> list[dict[str, Any]]:
    return [d for d in client.get("/api/datasets").json() if d["kind"] == "upload"]


def _assert_refused_by_line(
    client: TestClient, settings: Settings, filename: str, content: bytes, expected: list[tuple[int, str]]
) -> None:
    r = _upload(client, filename, content)
    assert r.status_code == 422, r.text
    body = r.json()
    assert "nothing was stored" in body["detail"]
    got = [(p["line"], p["message"]) for p in body["problems"]]
    assert [line for line, _ in got] == [line for line, _ in expected], got
    for (_, message), (_, fragment) in zip(got, expected, strict=True):
        assert fragment in message, (message, fragment)
    assert _stored(settings) == [], "a refused upload left files behind"
    assert _uploads(client) == []


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([CHAT, "{not json", CHAT], [(2, "not valid JSON")]),
        ([{"question": "q", "answer": "a"}], [(1, "not supported: a row with columns 'question', 'answer'")]),
        (
            [CHAT, {"messages": [USER, {"role": "assistant", "content": ""}]}],
            [(2, "message 2 (assistant) is empty")],
        ),
        ([CHAT, CHAT, {"messages": [USER, USER, ASSISTANT]}], [(3, "messages 1 and 2 are both user turns")]),
        ([{"messages": [ASSISTANT, USER]}], [(1, "starts with an assistant turn")]),
        (
            [{"messages": [USER, {"role": "system", "content": "x"}, ASSISTANT]}],
            [(1, "only the first message")],
        ),
        (
            [CHAT, "", "[1, 2]", {"messages": [USER]}],
            [(3, "expected a JSON object"), (4, "no assistant message")],
        ),
    ],
)
def test_a_malformed_jsonl_upload_is_refused_with_line_numbers(
    client: TestClient, settings: Settings, lines: list[Any], expected: list[tuple[int, str]]
) -> None:
    _assert_refused_by_line(client, settings, "data.jsonl", _jsonl(*lines), expected)


def test_a_malformed_csv_upload_names_the_lines_of_its_records(
    client: TestClient, settings: Settings
) -> None:
    content = b'prompt,completion\n"a prompt\nover two lines",fine\np2,\np3,c3,surplus\n'
    expected = [(4, "'completion' is empty"), (5, "3 fields but the header on line 1 names 2")]
    _assert_refused_by_line(client, settings, "pairs.csv", content, expected)
    chat = (
        b'messages\n"[{""role"": ""user"", ""content"": ""x""}, {""role"": ""user"", ""content"": ""y""}]"\n'
    )
    _assert_refused_by_line(client, settings, "chat.csv", chat, [(2, "both user turns")])


def test_a_malformed_parquet_upload_names_its_rows(client: TestClient, settings: Settings) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": "fine"}, {"text": "  "}, {"text": "ok"}]), buf)
    r = _upload(client, "texts.parquet", buf.getvalue())
    assert r.status_code == 422
    assert [(p["where"], p["message"]) for p in r.json()["problems"]] == [
        ("row 2", "'text' must be a non-empty string")
    ]
    assert _stored(settings) == []


def test_an_unsupported_file_type_is_refused_and_nothing_stored(
    client: TestClient, settings: Settings
) -> None:
    r = _upload(client, "notes.xml", b"hello\n")
    assert r.status_code == 422
    assert "unsupported file type '.xml'" in r.json()["detail"]
    assert _stored(settings) == []


def test_the_same_bytes_uploaded_twice_are_stored_once(client: TestClient, settings: Settings) -> None:
    content = _jsonl(CHAT, {"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT]})
    first = _upload(client, "chat.jsonl", content, name="my chats")
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["source"] == f"upload:{made['id']}"
    assert (made["name"], made["rows"], made["format"], made["size_bytes"]) == (
        "my chats",
        2,
        "messages",
        len(content),
    )
    again = _upload(client, "renamed.jsonl", content)
    assert again.status_code == 200
    assert again.json()["id"] == made["id"]
    assert len(_uploads(client)) == 1
    stored = settings.datasets_dir / made["id"] / "data.jsonl"
    assert stored.read_bytes() == content  # JSONL is kept byte for byte: line numbers stay true
    assert sorted(_stored(settings)) == sorted(
        [f"datasets/{made['id']}", f"datasets/{made['id']}/data.jsonl", f"datasets/{made['id']}/intake.json"]
    )
    different = _upload(client, "chat.jsonl", content + _jsonl(CHAT))
    assert different.status_code == 201 and different.json()["id"] != made["id"]


def test_the_list_has_uploads_first_then_the_presets(client: TestClient) -> None:
    made = _upload(client, "t.jsonl", _jsonl({"text": "hello"})).json()
    listed = client.get("/api/datasets").json()
    assert listed[0]["id"] == made["id"]
    presets = [d["source"] for d in listed if d["kind"] == "preset"]
    assert presets[:4] == [
        "preset:reverse-letters",
        "preset:uppercase-completion",
        "preset:counting-text",
        "preset:country-capitals",
    ]
    assert presets == [f"preset:{name}" for name in PRESET_DATASETS]
    assert client.get(f"/api/datasets/{made['id']}").json()["format"] == "text"
    assert client.get("/api/datasets/preset:counting-text").json()["format"] == "text"
    assert client.get("/api/datasets/nope").status_code == 404
    assert "preset:" in client.get("/api/datasets/preset:nope").json()["detail"]


def test_a_job_on_an_uploaded_csv_validates_and_the_worker_loads_the_stored_rows(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = json.dumps([USER, ASSISTANT]).replace('"', '""')
    made = _upload(client, "chat.csv", f'messages\n"{cells}"\n"{cells}"\n'.encode()).json()
    source = made["source"]
    r = client.post("/api/jobs", json={"name": "on my data", "dataset": {"source": source}})
    assert r.status_code == 201, r.text
    job = client.get(f"/api/jobs/{r.json()['id']}").json()
    cfg = parse_config(job["config"])
    assert cfg.dataset.source == source
    # the worker's own loader reads the stored file, found through the env the scheduler sets
    monkeypatch.setenv("TUNEBOARD_DATASETS_DIR", str(settings.datasets_dir))
    rows = load_rows(cfg)
    assert rows == [{"messages": [USER, ASSISTANT]}] * 2  # CSV's JSON cells were stored as lists
    validate_rows(rows, detect_format(rows[0]))


def test_the_new_job_form_offers_uploads_and_presets(client: TestClient) -> None:
    made = _upload(client, "t.jsonl", _jsonl({"text": "hello"})).json()
    html = client.get("/jobs/new").text
    assert f'<option value="upload:{made["id"]}">' in html
    assert '<option value="preset:reverse-letters">' in html
    prefilled = client.get("/jobs/new", params={"dataset": made["source"]}).text
    assert f'value="upload:{made["id"]}"' in prefilled.split('id="f-dataset-source"', 1)[1].split(">", 1)[0]


def test_the_upload_form_shows_problems_by_line_and_creates_nothing(
    client: TestClient, settings: Settings
) -> None:
    r = client.post("/datasets", files={"file": ("bad.jsonl", _jsonl(CHAT, "{oops"))})
    assert r.status_code == 422
    assert "line 2" in r.text and "not valid JSON" in r.text
    assert _stored(settings) == []
    ok = client.post("/datasets", files={"file": ("good.jsonl", _jsonl(CHAT))}, follow_redirects=False)
    assert ok.status_code == 303
    page = client.get(ok.headers["location"])
    assert page.status_code == 200 and "Uploaded and checked" in page.text
    assert client.get("/datasets").text.count("upload:") >= 1
    assert client.get("/datasets/nope").status_code == 404


def test_preview_parameters_are_checked_before_any_subprocess(client: TestClient) -> None:
    made = _upload(client, "t.jsonl", _jsonl({"text": "hello"})).json()
    r = client.get(f"/api/datasets/{made['id']}/preview", params={"model": "preset:nope"})
    assert r.status_code == 422 and "unknown preset" in r.json()["detail"]
    r = client.get(f"/api/datasets/{made['id']}/preview", params={"model": "--help"})
    assert r.status_code == 422
    r = client.get(f"/api/datasets/{made['id']}/preview", params={"max_seq_len": 0})
    assert r.status_code == 422 and "max_seq_len must be between 1" in r.json()["detail"]
    assert client.get("/api/datasets/nope/preview").status_code == 404


def test_launched_workers_are_told_where_uploads_live(settings: Settings, tmp_path: Path) -> None:
    launcher = make_launcher(settings.model_copy(update={"worker_module": "tests.fakes.fake_trainer"}))
    run_dir = tmp_path / "job-1"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"name": "sleep=0"}), encoding="utf-8")
    handle = launcher.launch(LaunchSpec(job_id=1, run_dir=run_dir, gpus=(), attempt=1))
    try:
        wait_until(
            lambda: launcher.poll(handle), 60, "the fake trainer to exit", until=lambda rc: rc is not None
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{(run_dir / 'stderr.log').read_text()}") from None
    seen = json.loads((run_dir / "fake-env.json").read_text(encoding="utf-8"))
    assert "TUNEBOARD_DATASETS_DIR" in seen["tuneboard_env"]


def test_concurrent_uploads_of_the_same_bytes_make_one_dataset(
    live_server: LiveServer, settings: Settings
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    content = _jsonl(*([CHAT] * 50))

    def post(i: int) -> httpx.Response:
        files = {"file": (f"copy-{i}.jsonl", content)}
        return httpx.post(f"{live_server.url}/api/datasets", files=files, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in answers}) == 1
    listed = [d for d in httpx.get(f"{live_server.url}/api/datasets").json() if d["kind"] == "upload"]
    assert len(listed) == 1
    assert [p.name for p in settings.datasets_dir.iterdir()] == [listed[0]["id"]]  # no staging left over
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_a_form_without_a_file_or_with_an_empty_file_is_refused(
    client: TestClient, settings: Settings
) -> None:
    r = client.post("/api/datasets", files={"data": ("d.jsonl", _jsonl(CHAT))})
    assert r.status_code == 422 and "field named 'file'" in r.json()["detail"]
    r = client.post("/api/datasets", json={"file": "d.jsonl"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = _upload(client, "empty.jsonl", b"\n\n")
    assert r.status_code == 422 and "has no rows" in r.json()["detail"]
    assert _stored(settings) == []
