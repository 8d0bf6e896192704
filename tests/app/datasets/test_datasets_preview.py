"""Dataset previews run the tokenizer in a subprocess, answer rows + histogram, and are cached on disk."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

SHORT = {"messages": [{"role": "user", "content": "Reverse: ab"}, {"role": "assistant", "content": "ba"}]}
LONG = {
    "messages": [
        {"role": "user", "content": "Reverse " + "a" * 200},
        {"role": "assistant", "content": "b" * 200},
    ]
}


def _upload(client: TestClient, rows: list[dict[str, object]]) -> str:
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post("/api/datasets", files={"file": ("chats.jsonl", content)})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_preview_renders_rows_counts_long_ones_and_is_cached(
    client: TestClient, settings: Settings
) -> None:
    dataset_id = _upload(client, [SHORT, LONG, SHORT, LONG, SHORT])
    params = {"model": "preset:tiny-gemma3n", "max_seq_len": 128}
    r = client.get(f"/api/datasets/{dataset_id}/preview", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["total"], body["over_max"], body["cached"]) == (5, 2, False)
    assert "Reverse: ab" in body["rows"][0]["rendered"] and body["rows"][0]["tokens"] < 128
    assert body["rows"][1]["tokens"] > 400
    assert sum(body["histogram"]["counts"]) == 5
    cached_files = list((settings.datasets_dir / dataset_id / "previews").glob("*.json"))
    assert len(cached_files) == 1
    again = client.get(f"/api/datasets/{dataset_id}/preview", params=params).json()
    assert again["cached"] is True and again["rows"] == body["rows"]
    # the page fragment renders the same (cached) answer: bars past max_seq_len are marked
    html = client.get(f"/datasets/{dataset_id}/partials/preview", params=params).text
    assert 'data-over-max="2"' in html and 'class="hist-col over"' in html
    assert "seg seg-trained" in html and "&lt;start_of_turn&gt;user" in html


def test_a_preview_that_takes_too_long_is_stopped_with_504(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", scheduler_enabled=False, dataset_preview_timeout_s=0.05)
    with TestClient(create_app(settings)) as client:
        r = client.get("/api/datasets/preset:reverse-letters/preview")
        assert r.status_code == 504
        assert "longer than 0.05 s" in r.json()["detail"]
        assert not (settings.datasets_dir / "presets").exists()  # nothing cached from a failed run
