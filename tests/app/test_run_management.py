"""Run management: rename, notes and tags; archive; delete runs and datasets with their files; the jobs
list's search, filters, sort and pages. On SQLite and, through .ci/postgres-tests, PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.models import Job, JobEvent, JobTag, MetricPoint, MetricSeries, Task
from app.settings import Settings
from tests.app.conftest import make_started_job, metric_event, set_status
from tests.app.test_pages import Elements

AUTH = {"Authorization": "Bearer test-token"}
EVIL = {"Origin": "https://evil.example"}


def _job(client: TestClient, name: str, **config: Any) -> int:
    r = client.post("/api/jobs", json={"name": name, **config})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _finished_run(
    client: TestClient, factory: sessionmaker[Session], settings: Settings, name: str = "run"
) -> tuple[int, Path]:
    """A job that ran (a run directory with files, metrics, events, a task row) and was cancelled."""
    job_id = make_started_job(factory, name=name)
    run_dir = settings.runs_dir / f"job-{job_id}-0a1b2c3d4e5f"
    (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (run_dir / "stderr.log").write_text("training\n")
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.run_dir = str(run_dir)
        session.commit()
    set_status(factory, job_id, JobStatus.RUNNING)
    events = [metric_event(1, 1, loss=2.0), metric_event(2, 2, loss=1.5)]
    events.append({"seq": 3, "kind": "log", "step": 2, "ts": 1_700_000_003.0, "payload": {"message": "hi"}})
    r = client.post(f"/api/jobs/{job_id}/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200, r.text
    task_input = settings.data_dir / "tmp" / "try-config-1.json"
    task_input.parent.mkdir(parents=True, exist_ok=True)
    task_input.write_text("{}")
    with factory() as session:
        session.add(
            Task(
                job_id=job_id,
                kind="try",
                status="succeeded",
                module="worker.tasks.try_adapter",
                run_dir=str(run_dir),
                input_path=str(task_input),
                log_path=str(run_dir / "try.log"),
                timeout_s=60.0,
            )
        )
        session.commit()
    set_status(factory, job_id, JobStatus.CANCELLING)
    set_status(factory, job_id, JobStatus.CANCELLED)
    return job_id, run_dir


def _rows(factory: sessionmaker[Session], job_id: int) -> dict[str, int]:
    with factory() as session:
        return {
            model.__tablename__: int(
                session.scalar(select(func.count()).select_from(model).where(model.job_id == job_id)) or 0
            )
            for model in (MetricPoint, MetricSeries, JobEvent, Task, JobTag)
        } | {"job": int(session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id)) or 0)}


# ------------------------------------------------------------------------------------ name, notes, tags


def test_a_run_is_renamed_noted_and_tagged(client: TestClient) -> None:
    job_id = _job(client, "first try")
    r = client.patch(
        f"/api/jobs/{job_id}",
        json={"name": "  baseline r=8 ", "notes": "lr too high?\nretry", "tags": ["Base", "lr:2e-4"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "baseline r=8"
    assert r.json()["tags"] == ["base", "lr:2e-4"]
    assert r.json()["notes"] == "lr too high?\nretry"
    listed = client.get("/api/jobs").json()
    assert listed[0]["tags"] == ["base", "lr:2e-4"] and listed[0]["name"] == "baseline r=8"
    # the config keeps the name it was submitted with
    assert client.get(f"/api/jobs/{job_id}").json()["config"]["name"] == "first try"
    page = client.get(f"/jobs/{job_id}").text
    doc = Elements(page)
    assert doc.text_by_id["run-notes"] == "lr too high?\nretry"
    assert "base" in doc.text_by_id["run-tags"] and "lr:2e-4" in doc.text_by_id["run-tags"]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"tags": ["has space"]}, "tags", "only letters, digits"),
        ({"tags": ["../etc"]}, "tags", "only letters, digits"),
        ({"tags": ["x" * 33]}, "tags", "longer than 32"),
        ({"tags": [f"t{i}" for i in range(17)]}, "tags", "at most 16"),
        ({"name": "a\nb"}, "name", "control characters"),
        ({"name": "n" * 201}, "name", "at most 200"),
        ({"notes": "x" * 10_001}, "notes", "at most 10000"),
    ],
)
def test_bad_names_notes_and_tags_are_refused_with_the_field_named(
    client: TestClient, changes: dict[str, Any], field: str, words: str
) -> None:
    job_id = _job(client, "keep")
    client.patch(f"/api/jobs/{job_id}", json={"tags": ["old"]})
    r = client.patch(f"/api/jobs/{job_id}", json=changes)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"{field}: ") and words in r.json()["detail"]
    kept = client.get("/api/jobs").json()[0]
    assert kept["name"] == "keep" and kept["tags"] == ["old"]  # nothing changed, not even the valid parts


def test_the_job_page_form_saves_and_shows_problems(client: TestClient) -> None:
    job_id = _job(client, "form")
    bad = client.post(f"/jobs/{job_id}/edit", data={"name": "x", "notes": "", "tags": "ok, not ok!"})
    assert bad.status_code == 422
    assert "may use only letters" in Elements(bad.text).text_by_id["run-edit-errors"]
    good = client.post(
        f"/jobs/{job_id}/edit",
        data={"name": "renamed", "notes": "n", "tags": "a, b a"},
        follow_redirects=False,
    )
    assert good.status_code == 303
    assert client.get("/api/jobs").json()[0]["tags"] == ["a", "b"]


# ------------------------------------------------------------------------------------ archive


def test_archived_runs_leave_the_default_list_and_keep_their_files(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id, run_dir = _finished_run(client, session_factory, settings)
    other = _job(client, "visible")
    assert client.post(f"/api/jobs/{job_id}/archive").status_code == 200
    assert [j["id"] for j in client.get("/api/jobs").json()] == [other]
    assert [j["id"] for j in client.get("/api/jobs?archived=only").json()] == [job_id]
    assert {j["id"] for j in client.get("/api/jobs?archived=all").json()} == {job_id, other}
    assert f'id="job-row-{job_id}"' not in client.get("/").text
    assert f'id="job-row-{job_id}"' in client.get("/?archived=only").text
    assert run_dir.is_dir()
    assert "archived-notice" in client.get(f"/jobs/{job_id}").text
    assert client.post(f"/api/jobs/{job_id}/unarchive").json()["archived_at"] is None
    assert job_id in [j["id"] for j in client.get("/api/jobs").json()]


def test_a_queued_run_cannot_be_archived(client: TestClient) -> None:
    job_id = _job(client, "queued")
    r = client.post(f"/api/jobs/{job_id}/archive")
    assert r.status_code == 409
    assert "only a finished run can be archived" in r.json()["detail"]
    doc = Elements(client.get(f"/jobs/{job_id}").text)
    assert not doc.find(**{"data-action": "archive"})  # no button for it either
    page = client.post(f"/jobs/{job_id}/archive")
    assert page.status_code == 409 and "cancel it first" in page.text


def test_the_job_page_archives_and_unarchives(client: TestClient) -> None:
    job_id = _job(client, "page")
    client.post(f"/api/jobs/{job_id}/cancel")
    assert Elements(client.get(f"/jobs/{job_id}").text).find(**{"data-action": "archive"})
    done = client.post(f"/jobs/{job_id}/archive", follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}"
    assert client.get("/api/jobs").json() == []
    assert Elements(client.get(f"/jobs/{job_id}").text).find(**{"data-action": "unarchive"})
    assert client.post(f"/jobs/{job_id}/unarchive", follow_redirects=False).status_code == 303
    assert [j["id"] for j in client.get("/api/jobs").json()] == [job_id]


# ------------------------------------------------------------------------------------ delete


def test_deleting_a_run_removes_its_rows_and_files(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id, run_dir = _finished_run(client, session_factory, settings)
    client.patch(f"/api/jobs/{job_id}", json={"tags": ["gone"]})
    child = client.post(f"/api/jobs/{job_id}/clone").json()["id"]
    before = _rows(session_factory, job_id)
    assert all(before.values()), before
    refused = client.delete(f"/api/jobs/{job_id}")
    assert refused.status_code == 400 and "confirm=delete" in refused.json()["detail"]
    assert run_dir.is_dir()
    r = client.delete(f"/api/jobs/{job_id}?confirm=delete")
    assert r.status_code == 200, r.text
    assert r.json()["removed"] == [f"runs/{run_dir.name}", "tmp/try-config-1.json"]
    assert r.json()["kept"] == []
    assert not run_dir.exists()
    assert not (settings.data_dir / "tmp" / "try-config-1.json").exists()
    assert _rows(session_factory, job_id) == {k: 0 for k in before}
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
    assert client.get(f"/api/jobs/{child}").json()["parent_job_id"] is None
    assert list(settings.runs_dir.iterdir()) == []


def test_a_running_run_must_be_cancelled_first(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id = make_started_job(session_factory)
    set_status(session_factory, job_id, JobStatus.RUNNING)
    r = client.delete(f"/api/jobs/{job_id}?confirm=delete")
    assert r.status_code == 409
    assert (
        r.json()["detail"]
        == f"job {job_id} is running; cancel it and wait until it has stopped, then delete it"
    )
    page = client.get(f"/jobs/{job_id}/delete")
    assert "cancel it" in Elements(page.text).text_by_id["delete-blocked"]
    assert 'id="delete-form"' not in page.text
    posted = client.post(f"/jobs/{job_id}/delete", data={"confirm": "delete"})
    assert posted.status_code == 409
    assert client.get(f"/api/jobs/{job_id}").status_code == 200


def test_a_run_whose_task_is_running_is_not_deleted(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id, run_dir = _finished_run(client, session_factory, settings)
    with session_factory() as session:
        task = session.scalars(select(Task).where(Task.job_id == job_id)).one()
        task.status = "running"
        session.commit()
    r = client.delete(f"/api/jobs/{job_id}?confirm=delete")
    assert r.status_code == 409 and "try task running" in r.json()["detail"]
    assert run_dir.is_dir()


def test_deleting_a_missing_run_is_a_404(client: TestClient) -> None:
    assert client.delete("/api/jobs/999?confirm=delete").status_code == 404
    assert client.post("/jobs/999/delete", data={"confirm": "delete"}).status_code == 404
    assert client.get("/jobs/999/delete").status_code == 404


def test_a_foreign_origin_cannot_delete_archive_or_rename(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id, run_dir = _finished_run(client, session_factory, settings)
    attempts = [
        client.post(f"/jobs/{job_id}/delete", data={"confirm": "delete"}, headers=EVIL),
        client.delete(f"/api/jobs/{job_id}?confirm=delete", headers=EVIL),
        client.post(f"/jobs/{job_id}/archive", headers={"Sec-Fetch-Site": "cross-site"}),
        client.post(
            f"/jobs/{job_id}/edit", data={"name": "pwned"}, headers={"Referer": "https://evil.example/"}
        ),
    ]
    assert [a.status_code for a in attempts] == [403, 403, 403, 403]
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["name"] == "run" and run_dir.is_dir()
    assert client.get("/api/jobs?archived=only").json() == []


def test_names_are_labels_and_only_the_runs_own_directory_is_removed(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id, run_dir = _finished_run(client, session_factory, settings)
    outside = settings.data_dir / "keep.txt"
    outside.write_text("precious")
    traversal = "../../keep.txt"
    r = client.patch(f"/api/jobs/{job_id}", json={"name": traversal})
    assert r.status_code == 200 and r.json()["name"] == traversal
    assert "../../keep.txt" in client.get("/").text  # shown as text, escaped by the template
    assert client.delete(f"/api/jobs/{job_id}?confirm=delete").status_code == 200
    assert outside.read_text() == "precious" and not run_dir.exists()
    # a row whose run_dir names something else (edited by hand, another job's) is never removed
    victim = settings.data_dir / "datasets"
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "data.jsonl").write_text("{}")
    second, second_dir = _finished_run(client, session_factory, settings, name="second")
    for bad in (str(settings.runs_dir / ".." / "datasets"), str(settings.runs_dir / f"job-{job_id}-0a1b")):
        with session_factory() as session:
            job = session.get(Job, second)
            assert job is not None
            job.run_dir = bad
            session.commit()
        page = client.get(f"/jobs/{second}/delete")
        assert "delete-kept" in page.text
    (settings.runs_dir / f"job-{job_id}-0a1b").mkdir()
    r = client.delete(f"/api/jobs/{second}?confirm=delete")
    assert r.status_code == 200
    assert r.json()["removed"] == ["tmp/try-config-1.json"]
    assert r.json()["kept"][0]["reason"].startswith("not a run directory of this job")
    assert (victim / "data.jsonl").exists() and (settings.runs_dir / f"job-{job_id}-0a1b").is_dir()
    assert second_dir.is_dir()  # never named by the row any more: left alone


def test_the_delete_page_says_what_goes_and_needs_its_confirm_field(
    client: TestClient, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    job_id, run_dir = _finished_run(client, session_factory, settings)
    page = client.get(f"/jobs/{job_id}/delete")
    what = Elements(page.text).text_by_id["delete-what"]
    assert "2 metric points" in what and f"runs/{run_dir.name}" in what and "2 files" in what
    missing = client.post(f"/jobs/{job_id}/delete", data={})
    assert missing.status_code == 400 and run_dir.is_dir()
    done = client.post(f"/jobs/{job_id}/delete", data={"confirm": "delete"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/?deleted={job_id}"
    assert not run_dir.exists()
    assert f"Job #{job_id} and its files were deleted" in client.get(done.headers["location"]).text


# ------------------------------------------------------------------------------------ datasets

CHAT = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3


def test_deleting_a_dataset_removes_its_files_unless_a_job_still_needs_it(
    client: TestClient, settings: Settings
) -> None:
    body = "".join(json.dumps(row) + "\n" for row in CHAT).encode()
    up = client.post("/api/datasets", files={"file": ("chats.jsonl", body)})
    assert up.status_code == 201, up.text
    dataset_id = up.json()["id"]
    folder = settings.datasets_dir / dataset_id
    assert (folder / "data.jsonl").is_file()
    job_id = _job(client, "uses it", dataset={"source": f"upload:{dataset_id}", "format": "messages"})
    busy = client.delete(f"/api/datasets/{dataset_id}?confirm=delete")
    assert busy.status_code == 409 and f"job {job_id} trains on dataset" in busy.json()["detail"]
    assert "delete-blocked" in client.get(f"/datasets/{dataset_id}/delete").text
    client.post(f"/api/jobs/{job_id}/cancel")
    assert client.delete(f"/api/datasets/{dataset_id}").status_code == 400
    assert 'id="delete-used"' in client.get(f"/datasets/{dataset_id}/delete").text
    done = client.post(f"/datasets/{dataset_id}/delete", data={"confirm": "delete"}, follow_redirects=False)
    assert done.status_code == 303
    assert not folder.exists()
    assert [p.name for p in settings.datasets_dir.iterdir()] == []
    assert client.get(f"/api/datasets/{dataset_id}").status_code == 404
    assert client.delete(f"/api/datasets/{dataset_id}?confirm=delete").status_code == 404
    assert client.delete("/api/datasets/preset:capitals?confirm=delete").status_code == 400
    assert client.delete("/api/datasets/..%2F..%2Fruns?confirm=delete").status_code == 404
    assert client.post("/datasets/x/delete", data={"confirm": "delete"}, headers=EVIL).status_code == 403


# ------------------------------------------------------------------------------------ search, filter, sort


@pytest.fixture
def catalogue(client: TestClient, session_factory: sessionmaker[Session]) -> dict[str, int]:
    """Five runs with different names, models, methods, statuses, tags, losses and creation days."""
    runs = (
        ("alpha capitals", "preset:tiny-llama", "sft"),
        ("Beta capitals", "preset:tiny-gemma3n", "sft"),
        ("gamma", "preset:tiny-llama", "dpo"),
        ("delta_x", "preset:tiny-gemma3n", "sft"),
        ("epsilon 100%", "preset:tiny-llama", "sft"),
    )
    # a preference method needs preference data (refused at creation otherwise): the demo pairs
    pairs = {"source": "preset:uppercase-preference"}
    ids = {
        name: _job(
            client,
            name,
            model={"name": model},
            method=method,
            **({"dataset": pairs} if method != "sft" else {}),
        )
        for name, model, method in runs
    }
    days = {"alpha capitals": 1, "Beta capitals": 2, "gamma": 3, "delta_x": 4, "epsilon 100%": 5}
    losses = {"alpha capitals": 0.5, "Beta capitals": 0.2, "gamma": None, "delta_x": 0.9, "epsilon 100%": 0.1}
    with session_factory() as session:
        for name, job_id in ids.items():
            job = session.get(Job, job_id)
            assert job is not None
            job.created_at = datetime(2026, 3, days[name], 12, tzinfo=UTC)
            job.last_loss = losses[name]
        session.commit()
    client.post(f"/api/jobs/{ids['gamma']}/cancel")
    client.patch(f"/api/jobs/{ids['alpha capitals']}", json={"tags": ["baseline", "capitals"]})
    client.patch(f"/api/jobs/{ids['gamma']}", json={"tags": ["baseline"]})
    return ids


def _names(client: TestClient, query: str) -> list[str]:
    r = client.get("/api/jobs?" + query)
    assert r.status_code == 200, r.text
    return [j["name"] for j in r.json()]


def test_search_filters_and_sorts(client: TestClient, catalogue: dict[str, int]) -> None:
    assert _names(client, "q=CAPITALS") == ["Beta capitals", "alpha capitals"]
    assert _names(client, "q=capitals&sort=name") == ["alpha capitals", "Beta capitals"]
    assert _names(client, "q=100%25") == ["epsilon 100%"]  # % is a character, not a wildcard
    assert _names(client, "q=delt_") == []  # nor is _ (it would match "delta")
    assert _names(client, "q=delta_x") == ["delta_x"]
    assert _names(client, "q=tiny-gemma3n") == ["delta_x", "Beta capitals"]
    assert _names(client, "tag=baseline") == ["gamma", "alpha capitals"]
    assert _names(client, "q=tag:baseline status:cancelled") == ["gamma"]
    assert _names(client, "q=baseline") == ["gamma", "alpha capitals"]  # a word also matches a tag
    assert _names(client, "status=cancelled") == ["gamma"]
    assert _names(client, "status=queued,cancelled&sort=oldest")[:2] == ["alpha capitals", "Beta capitals"]
    assert _names(client, "model=preset:tiny-gemma3n") == ["delta_x", "Beta capitals"]
    assert _names(client, "method=dpo") == ["gamma"]
    assert "delta_x" in _names(client, "method=sft")
    assert _names(client, "from=2026-03-02&to=2026-03-03") == ["gamma", "Beta capitals"]
    assert _names(client, "sort=loss") == [
        "epsilon 100%",
        "Beta capitals",
        "alpha capitals",
        "delta_x",
        "gamma",
    ]
    assert _names(client, "sort=status")[0] == "gamma"
    r = client.get("/api/jobs?limit=2&offset=2")
    assert [j["name"] for j in r.json()] == ["gamma", "Beta capitals"]
    assert r.headers["x-total-count"] == "5"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("status=bogus", "unknown status 'bogus'"),
        ("sort=random", "unknown sort"),
        ("method=ppo", "unknown method"),
        ("from=yesterday", "is not a date"),
        ("from=2026-03-05&to=2026-03-01", "before the start date"),
        ("offset=-1", "not a whole number"),
        ("archived=maybe", "use one of hide, only, all"),
        ("tag=a&q=tag:b", "two different tag filters"),
        ("q=a%00b", "control characters"),  # PostgreSQL refuses NUL in text: never sent to it
        ("model=x%00", "control characters"),
    ],
)
def test_bad_filters_are_422_with_the_reason(client: TestClient, query: str, words: str) -> None:
    r = client.get("/api/jobs?" + query)
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    page = client.get("/?" + query)
    assert page.status_code == 422 and words in Elements(page.text).text_by_id["list-problems"]


def test_the_list_page_keeps_its_filters_pages_and_partial(
    client: TestClient, catalogue: dict[str, int]
) -> None:
    page = client.get("/?q=capitals&tag=baseline")
    doc = Elements(page.text)
    rows = [
        a["data-job-id"]
        for a in doc.find()
        if "data-job-id" in a and a.get("id", "").startswith("job-row-") and a["id"] != "job-row-0"
    ]
    assert rows == [str(catalogue["alpha capitals"])]
    assert doc.find(id="list-q")[0]["value"] == "capitals"
    assert "Showing 1–1 of 1 run: “capitals” · tag baseline." in " ".join(
        doc.text_by_id["list-count"].split()
    )
    assert doc.find(id="jobs-results")[0]["data-live"] == "0"
    first = Elements(client.get("/?limit=2").text)
    assert first.find(id="jobs-results")[0]["data-live"] == "1"
    (older,) = first.find(rel="next")
    assert older["href"] == "/?offset=2"
    second = Elements(client.get("/?limit=2&offset=2").text)
    assert [a["href"] for a in second.find(rel="prev")] == ["/?"]
    assert "Showing 3–4 of 5 runs" in second.text_by_id["list-count"]
    partial = client.get("/?q=gamma", headers={"X-Jobs-Partial": "1"})
    assert partial.text.lstrip().startswith('<div id="jobs-results"') and "<html" not in partial.text
    assert f'id="job-row-{catalogue["gamma"]}"' in partial.text
    none = Elements(client.get("/?q=nothing-like-this").text)
    assert "No runs match" in none.text_by_id["list-count"] and "hidden" in none.find(id="jobs-table-wrap")[0]
    assert "hidden" in none.find(id="empty-state")[0]  # "no runs yet" is for an empty dashboard only


def test_the_migration_copies_each_runs_method_from_its_config(
    tmp_path: Path, database_url: str | None
) -> None:
    """job.method (what the list filters on) comes from the stored config; configs without one are sft."""
    import sqlalchemy as sa

    from app.migrate import upgrade

    url = database_url or f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0006")
    engine = sa.create_engine(url)
    job = sa.Table("job", sa.MetaData(), autoload_with=engine)
    filler = {sa.Integer: 0, sa.String: "", sa.Text: "", sa.Float: 0.0, sa.DateTime: datetime.now(UTC)}
    required = {
        c.name: next(v for t, v in filler.items() if isinstance(c.type, t))
        for c in job.columns
        if not c.nullable and not c.primary_key and c.name not in ("config", "status")
    }
    with engine.begin() as conn:
        for config in ({"method": "kto"}, {"name": "before methods"}):
            conn.execute(job.insert().values(**required, status="succeeded", config=config))
    engine.dispose()
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        methods = [row[0] for row in conn.execute(sa.text("SELECT method FROM job ORDER BY id"))]
    engine.dispose()
    assert methods == ["kto", "sft"]
