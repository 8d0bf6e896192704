"""One dataset upload cannot freeze the app: wide or hostile files are refused early with a clear 4xx, checks
run off the event loop and outside the request-session pool (health, job lists and worker ingest keep
answering), at most a few at once, and a client that leaves stops the work it started."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import contract.datasets as validate
from app.settings import Settings
from tests.app.conftest import LiveServer, make_started_job, metric_event
from tests.waiting import stopped_changing, wait_until

CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _csv(header: list[str], *records: list[str]) -> bytes:
    return "\n".join(",".join(r) for r in (header, *records)).encode() + b"\n"


def _text_rows(n: int, tag: str = "") -> bytes:
    return "".join(json.dumps({"text": f"{tag} example {i}"}) + "\n" for i in range(n)).encode()


def _left_on_disk(settings: Settings) -> list[str]:
    found: list[str] = []
    for root in (settings.datasets_dir, settings.data_dir / "tmp"):
        if root.exists():
            found += [str(p.relative_to(settings.data_dir)) for p in root.rglob("*")]
    return found


def _parts_received(settings: Settings) -> int:
    """Uploads the app is holding: each streams into an upload-*.part file in the data dir's tmp folder."""
    tmp = settings.data_dir / "tmp"
    return len(list(tmp.glob("upload-*.part"))) if tmp.exists() else 0


def _uploads(client: TestClient) -> list[dict[str, Any]]:
    return [d for d in client.get("/api/datasets").json() if d["kind"] == "upload"]


# ---------------------------------------------------------------------------------------------- wide files


def test_a_csv_with_a_hundred_thousand_columns_is_refused_quickly_naming_the_column_limit(
    live_server: LiveServer, settings: Settings
) -> None:
    header = ["text"] + [f"c{i}" for i in range(100_000)]
    body = _csv(header, ["hello"] + ["x"] * 100_000)
    started = time.monotonic()
    # the quadratic header check took minutes here; linear checks answer in well under a second
    r = httpx.post(f"{live_server.url}/api/datasets", files={"file": ("wide.csv", body)}, timeout=10)
    assert time.monotonic() - started < 10
    assert r.status_code == 422
    problem = r.json()["problems"][0]
    assert problem["line"] == 1
    assert f"at most {validate.MAX_COLUMNS} columns" in problem["message"]
    assert "100001 columns" in problem["message"]
    assert _left_on_disk(settings) == []


def test_the_header_is_read_but_no_row_after_a_header_over_the_column_limit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[dict[str, Any]] = []
    real = validate.row_problem

    def counted(row: dict[str, Any], fmt: str) -> str | None:
        checked.append(row)
        return real(row, fmt)

    monkeypatch.setattr(validate, "row_problem", counted)
    header = ["text"] + [f"c{i}" for i in range(validate.MAX_COLUMNS)]
    body = _csv(header, *(["hi"] + ["x"] * validate.MAX_COLUMNS for _ in range(50)))
    r = client.post("/api/datasets", files={"file": ("wide.csv", body)})
    assert r.status_code == 422
    assert r.json()["total"] == 1  # one problem: the header; the 50 rows were never parsed
    assert checked == []


def test_a_csv_row_wider_than_the_row_limit_is_refused_naming_the_limit(client: TestClient) -> None:
    cell = "y" * 100_000  # each cell under the csv module's field limit, the row over the row limit
    count = validate.MAX_ROW_CHARS // len(cell) + 2
    header = ["text"] + [f"c{i}" for i in range(count)]
    body = _csv(header, ["ok"] + ["z"] * count, ["hello"] + [cell] * count)
    r = client.post("/api/datasets", files={"file": ("fat.csv", body)})
    assert r.status_code == 422
    problem = r.json()["problems"][0]
    assert problem["line"] == 3
    assert f"over the limit of {validate.MAX_ROW_CHARS} characters" in problem["message"]


def test_a_json_row_with_more_keys_than_the_column_limit_is_refused(client: TestClient) -> None:
    wide = {"text": "hi", **{f"k{i}": i for i in range(validate.MAX_COLUMNS + 5)}}
    body = (json.dumps({"text": "fine"}) + "\n" + json.dumps(wide) + "\n").encode()
    r = client.post("/api/datasets", files={"file": ("wide.jsonl", body)})
    assert r.status_code == 422
    assert r.json()["problems"][0]["line"] == 2
    assert f"at most {validate.MAX_COLUMNS} columns" in r.json()["problems"][0]["message"]


def test_a_parquet_file_with_too_many_columns_is_refused_before_its_rows_are_read(
    client: TestClient,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"text": ["hi"], **{f"c{i}": [i] for i in range(validate.MAX_COLUMNS + 1)}}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    r = client.post("/api/datasets", files={"file": ("wide.parquet", buf.getvalue())})
    assert r.status_code == 422
    assert f"at most {validate.MAX_COLUMNS} columns" in r.json()["detail"]


# ------------------------------------------------------------------------------------------ hostile values


def test_deeply_nested_and_huge_number_jsonl_lines_are_422_naming_their_lines(
    client: TestClient, settings: Settings
) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    huge = "9" * 100_000
    body = (
        json.dumps({"text": "fine"}) + f'\n{{"text": "a", "extra": {nested}}}\n{{"text": "b", "n": {huge}}}\n'
    ).encode()
    r = client.post("/api/datasets", files={"file": ("bad.jsonl", body)})
    assert r.status_code == 422
    problems = {p["line"]: p["message"] for p in r.json()["problems"]}
    assert "nested too deeply" in problems[2]
    assert "a number with more than" in problems[3] and "digits" in problems[3]
    assert _left_on_disk(settings) == []


def test_deeply_nested_and_huge_number_json_documents_are_422_naming_their_lines(client: TestClient) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    body = f'[\n  {{"text": "fine"}},\n  {{"text": "x", "deep": {nested}}}\n]\n'.encode()
    r = client.post("/api/datasets", files={"file": ("deep.json", body)})
    assert r.status_code == 422
    assert r.json()["problems"][0]["line"] == 3
    assert "nested too deeply" in r.json()["problems"][0]["message"]
    huge = "7" * 100_000
    body = f'[\n  {{"text": "fine"}},\n\n  {{"text": "x", "n": {huge}}}\n]\n'.encode()
    r = client.post("/api/datasets", files={"file": ("huge.json", body)})
    assert r.status_code == 422
    assert r.json()["problems"][0]["line"] == 4
    assert "digits" in r.json()["problems"][0]["message"]


def test_a_csv_messages_cell_nested_too_deeply_is_a_line_numbered_422(client: TestClient) -> None:
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerows([["messages"], [json.dumps(CHAT_ROW["messages"])], ["[" * 60_000 + "]" * 60_000]])
    r = client.post("/api/datasets", files={"file": ("chat.csv", out.getvalue().encode())})
    assert r.status_code == 422
    assert r.json()["problems"][0]["line"] == 3
    assert "nested too deeply" in r.json()["problems"][0]["message"]


def test_a_parquet_error_names_the_upload_not_a_server_path(client: TestClient, settings: Settings) -> None:
    r = client.post("/api/datasets", files={"file": ("broken.parquet", b"PAR1 this is not parquet at all")})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "broken.parquet" in detail
    for leak in (str(settings.data_dir), "upload-", ".part", "/tmp", os.sep + "work" + os.sep):
        assert leak not in detail


# ---------------------------------------------------------------------------------------------- the disk


@pytest.mark.parametrize("seam", ["app.datasets.service._place", "app.datasets.upload.tempfile.mkstemp"])
def test_a_full_disk_is_507_with_a_message_and_leaves_nothing(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, seam: str
) -> None:
    def full(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(seam, full)
    r = client.post("/api/datasets", files={"file": ("ok.jsonl", _text_rows(3))})
    assert r.status_code == 507
    assert "disk" in r.json()["detail"] and "free" in r.json()["detail"]
    assert str(settings.data_dir) not in r.json()["detail"]
    assert _left_on_disk(settings) == []
    assert _uploads(client) == []


def test_upload_leftovers_of_a_crash_are_removed_at_start_up(app: Any, settings: Settings) -> None:
    tmp = settings.data_dir / "tmp"
    tmp.mkdir(parents=True)
    settings.datasets_dir.mkdir(parents=True)
    old = time.time() - 24 * 3600
    stale_part = tmp / "upload-abc123.part"
    stale_part.write_bytes(b"half an upload")
    staging = settings.datasets_dir / ".staging-xyz"
    staging.mkdir()
    (staging / "data.jsonl").write_text("{}\n")
    for p in (stale_part, staging / "data.jsonl", staging):
        os.utime(p, (old, old))
    fresh_part = tmp / "upload-now.part"  # another app process on the same data dir may be receiving it
    fresh_part.write_bytes(b"arriving")
    with TestClient(app):
        assert not stale_part.exists()
        assert not staging.exists()
        assert fresh_part.exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("filename", ["rows.jsonl", "rows.csv"])
def test_stored_datasets_are_readable_by_their_owner_only(
    client: TestClient, settings: Settings, filename: str
) -> None:
    body = _text_rows(3) if filename.endswith(".jsonl") else _csv(["text"], ["a"], ["b"])
    r = client.post("/api/datasets", files={"file": (filename, body)})
    assert r.status_code == 201
    stored = settings.datasets_dir / r.json()["id"]
    assert _mode(settings.datasets_dir) == 0o700
    assert _mode(stored) == 0o700
    assert _mode(stored / "data.jsonl") == 0o600
    assert _mode(settings.data_dir / "tmp") == 0o700


# ---------------------------------------------------------------------------------------------- the app


class _GatedChecks:
    """Replaces the per-row check: records how many checks run at once and holds them until released."""

    def __init__(self, *, hold_s: float = 0.0) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.most_at_once = 0
        self.rows_checked = 0
        self.hold_s = hold_s
        self._real = validate.row_problem

    def __call__(self, row: dict[str, Any], fmt: str) -> str | None:
        me = threading.get_ident()
        with self.lock:
            self.rows_checked += 1
            self.running.add(me)
            self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            if self.hold_s:
                time.sleep(self.hold_s)
            else:
                self.release.wait(30)
            return self._real(row, fmt)
        finally:
            with self.lock:
                self.running.discard(me)

    def wait_for_running(self, n: int, timeout: float = 10) -> None:
        wait_until(
            lambda: len(self.running), timeout, f"{n} checks running", 0.02, until=lambda now: now >= n
        )


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[_GatedChecks]:
    """Per-row checks that wait for `release` (always released at the end)."""
    gate = _GatedChecks()
    monkeypatch.setattr(validate, "row_problem", gate)
    yield gate
    gate.release.set()


def test_sixteen_slow_uploads_leave_health_job_lists_and_ingest_answering(
    live_server: LiveServer, gated: _GatedChecks
) -> None:
    token = "ingest-token"
    job_id = make_started_job(live_server.app.state.session_factory, token=token)
    url = live_server.url

    def upload(i: int) -> int:
        body = _text_rows(20, tag=f"upload {i}")
        return httpx.post(
            f"{url}/api/datasets", files={"file": (f"u{i}.jsonl", body)}, timeout=60
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        answers = [pool.submit(upload, i) for i in range(16)]
        gated.wait_for_running(2)
        # every upload has arrived (each streams into its own temp file) and waits for a check slot or has one
        wait_until(
            lambda: _parts_received(live_server.settings),
            10,
            "all 16 uploads received",
            until=lambda n: n >= 16,
        )
        # generous bounds: before the fix these waited for the uploads (every request session was theirs)
        with httpx.Client(base_url=url, timeout=5) as http:
            for _ in range(3):
                assert http.get("/api/health").status_code == 200
                assert http.get("/api/jobs").status_code == 200
            ingest = http.post(
                f"/api/jobs/{job_id}/events",
                json={"events": [metric_event(1, 1, loss=1.0)]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert ingest.status_code == 200
        assert gated.most_at_once <= 2  # checks are limited, so the CPU is left for the rest
        gated.release.set()
        assert sorted(a.result() for a in answers) == [201] * 16
    assert gated.most_at_once == 2


def test_an_upload_that_waits_too_long_for_a_check_slot_gets_503_with_retry_after(
    tmp_path: Path, gated: _GatedChecks
) -> None:
    from app.main import create_app

    settings = Settings(
        data_dir=tmp_path / "data",
        scheduler_enabled=False,
        dataset_checks_max_concurrent=1,
        dataset_check_queue_s=0.3,
    )
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/api/datasets", files={"file": ("a.jsonl", _text_rows(2, "a"))})
        gated.wait_for_running(1)
        second = client.post("/api/datasets", files={"file": ("b.jsonl", _text_rows(2, "b"))})
        assert second.status_code == 503
        assert second.headers["Retry-After"].isdigit()
        assert "TUNEBOARD_DATASET_CHECKS_MAX_CONCURRENT" in second.json()["detail"]
        gated.release.set()
        assert first.result().status_code == 201
    assert not any((settings.data_dir / "tmp").iterdir())


def test_a_client_that_leaves_stops_the_check_it_started(
    live_server: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _GatedChecks(hold_s=0.005)  # 4000 rows: 20 s of checking
    monkeypatch.setattr(validate, "row_problem", slow)
    body = _text_rows(4000)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(
            f"{live_server.url}/api/datasets",
            files={"file": ("slow.jsonl", body)},
            timeout=httpx.Timeout(10, read=0.5),
        )
    # the app notices the disconnect within a fraction of a second: the count of checked rows stops moving
    # (sampled every 0.2 s, while a running check adds a row every 5 ms)
    seen = wait_until(
        stopped_changing(lambda: slow.rows_checked), 10, "the check to stop", interval=0.2
    ).value
    time.sleep(1.0)  # a window in which no row may be checked: that it stays still is what is under test
    assert slow.rows_checked == seen, "the check went on after the client left"
    assert seen < 4000
    assert _left_on_disk(settings) == []
