"""Comparing runs: the compare API (aligned series, config diff, summaries), its one SSE stream, the page."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.compare.service import map_to_x
from app.jobs import service
from app.jobs.status import JobStatus
from contract.config import parse_config
from tests.app.metrics.test_stream import collect_until, sse_messages
from tests.app.test_pages import Elements

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_run(factory: sessionmaker[Session], config: dict[str, Any]) -> int:
    """A job with this config, moved to `starting` with the test worker token (as the scheduler leaves it)."""
    with factory() as session:
        job = service.create_job(session, config=parse_config(config), config_text=str(config))
        service.transition(session, job=job, to=JobStatus.STARTING)
        job.token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        session.commit()
        return job.id


def post_events(client: TestClient | httpx.Client, job_id: int, events: list[dict[str, Any]]) -> None:
    r = client.post(f"/api/jobs/{job_id}/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200, r.text


def metrics(first_seq: int, steps: range, **series: Any) -> list[dict[str, Any]]:
    """One metric event per step; each keyword is a function of the step (or None to leave it out)."""
    events = []
    for i, step in enumerate(steps):
        payload = {k: f(step) for k, f in series.items() if f(step) is not None}
        events.append({"seq": first_seq + i, "kind": "metric", "step": step, "ts": 1.0, "payload": payload})
    return events


def guard(seq: int, step: int) -> dict[str, Any]:
    payload = {"reason": "grad_norm spike", "action": "warn", "detail": {}}
    return {"seq": seq, "kind": "guard", "step": step, "ts": 1.0, "payload": payload}


@pytest.fixture
def three_runs(client: TestClient, session_factory: sessionmaker[Session]) -> list[int]:
    """Runs of 10, 5 and 8 steps; only the first two report tokens_seen; configs differ in three keys."""
    a = make_run(session_factory, {"name": "a", "training": {"learning_rate": 1e-4}, "lora": {"r": 8}})
    b = make_run(session_factory, {"name": "b", "training": {"learning_rate": 2e-4}, "lora": {"r": 8}})
    c = make_run(session_factory, {"name": "c", "training": {"learning_rate": 2e-4}, "lora": {"r": 16}})
    post_events(
        client, a, metrics(1, range(1, 11), loss=lambda s: 3.0 - 0.2 * s, tokens_seen=lambda s: 100 * s)
    )
    # b reports tokens_seen every second step only: the x of the others is interpolated
    post_events(
        client,
        b,
        metrics(
            1,
            range(1, 6),
            loss=lambda s: [2.0, 1.5, 1.7, 1.2, 1.4][s - 1],
            tokens_seen=lambda s: 50 * s if s % 2 == 0 else None,
        )
        + [guard(6, 3), guard(7, 4)],
    )
    post_events(
        client, c, metrics(1, range(1, 9), loss=lambda s: 2.5, eval_loss=lambda s: 2.0 if s == 8 else None)
    )
    return [a, b, c]


def test_compare_of_runs_with_different_lengths_returns_every_point_of_each_on_the_step_axis(
    client: TestClient, three_runs: list[int]
) -> None:
    a, b, c = three_runs
    r = client.get("/api/compare", params={"ids": f"{a},{b},{c}", "metrics": "loss,eval_loss"})
    assert r.status_code == 200, r.text
    body = r.json()
    loss = body["series"]["loss"]
    assert [s for s, _ in loss[str(a)]] == list(range(1, 11))
    assert [s for s, _ in loss[str(b)]] == list(range(1, 6))
    assert [s for s, _ in loss[str(c)]] == list(range(1, 9))
    assert loss[str(b)][2] == [3, 1.7]
    # a metric only one run has: the others are simply absent, not an error
    assert body["series"]["eval_loss"] == {str(c): [[8, 2.0]]}
    assert set(body["series"]) == {"loss", "eval_loss"}


def test_the_tokens_seen_axis_maps_steps_interpolates_and_leaves_out_runs_without_it(
    client: TestClient, three_runs: list[int]
) -> None:
    a, b, c = three_runs
    body = client.get(
        "/api/compare", params={"ids": f"{a},{b},{c}", "metrics": "loss", "x": "tokens_seen"}
    ).json()
    loss = body["series"]["loss"]
    assert [x for x, _ in loss[str(a)]] == [100 * s for s in range(1, 11)]
    # b: 100 at step 2, 200 at step 4; step 1 from (0, 0), step 3 between; step 5 is past the last report
    assert loss[str(b)] == [[50.0, 2.0], [100.0, 1.5], [150.0, 1.7], [200.0, 1.2]]
    assert str(c) not in loss
    assert body["x"] == "tokens_seen"


def test_the_config_diff_is_exactly_the_keys_that_changed(client: TestClient, three_runs: list[int]) -> None:
    a, b, c = three_runs
    diff = client.get("/api/compare", params={"ids": f"{a},{b},{c}", "metrics": "loss"}).json()["config_diff"]
    assert set(diff) == {"name", "training.learning_rate", "lora.r"}
    assert diff["training.learning_rate"] == {str(a): 1e-4, str(b): 2e-4, str(c): 2e-4}
    assert diff["lora.r"] == {str(a): 8, str(b): 8, str(c): 16}
    # two runs with the same config (but their names) differ only in the name
    d = client.post(
        "/api/jobs", json={"name": "d", "training": {"learning_rate": 2e-4}, "lora": {"r": 16}}
    ).json()
    same = client.get("/api/compare", params={"ids": f"{c},{d['id']}", "metrics": "loss"}).json()[
        "config_diff"
    ]
    assert set(same) == {"name"}


def test_the_summary_rows_carry_final_and_best_loss_guard_events_and_status(
    client: TestClient, three_runs: list[int], move_job: Any
) -> None:
    a, b, c = three_runs
    move_job(b, JobStatus.FAILED, "diverged")
    runs = client.get("/api/compare", params={"ids": f"{b},{a},{c}", "metrics": "loss"}).json()["runs"]
    assert [r["id"] for r in runs] == [b, a, c]  # the order asked for
    rb, ra, rc = runs
    assert rb["status"] == "failed" and rb["final_loss"] == 1.4 and rb["best_loss"] == 1.2
    assert rb["guard_events"] == 2 and ra["guard_events"] == 0
    assert ra["best_loss"] == pytest.approx(1.0) and ra["final_loss"] == pytest.approx(1.0)
    assert rc["best_eval_loss"] == 2.0
    # from start to finish, or to now while on; a queued job has no duration yet
    assert rb["duration_seconds"] is not None and rb["duration_seconds"] >= 0
    assert rc["duration_seconds"] is not None and rc["duration_seconds"] >= 0
    queued = client.post("/api/jobs", json={"name": "waiting"}).json()["id"]
    rows = client.get("/api/compare", params={"ids": f"{a},{queued}", "metrics": "loss"}).json()["runs"]
    assert rows[1]["duration_seconds"] is None and rows[1]["best_loss"] is None


def test_compare_refuses_too_few_or_too_many_ids_and_names_unknown_ones(client: TestClient) -> None:
    ids = [client.post("/api/jobs", json={"name": f"r{i}"}).json()["id"] for i in range(9)]
    one = client.get("/api/compare", params={"ids": str(ids[0])})
    assert one.status_code == 400 and "2 to 8" in one.json()["detail"]
    nine = client.get("/api/compare", params={"ids": ",".join(map(str, ids))})
    assert nine.status_code == 400 and "got 9" in nine.json()["detail"]
    unknown = client.get("/api/compare", params={"ids": f"{ids[0]},777,778"})
    assert unknown.status_code == 404
    assert unknown.json()["unknown_ids"] == [777, 778]
    assert "777, 778" in unknown.json()["detail"]
    assert client.get("/api/compare", params={"ids": f"{ids[0]},x"}).status_code == 400
    assert client.get("/api/compare", params={"ids": f"{ids[0]},²"}).status_code == 400
    many = client.get("/api/compare", params={"ids": ",".join(str(i) for i in range(1, 2000))})
    assert many.status_code == 400 and "more than 32" in many.json()["detail"]
    assert client.get("/api/compare", params={"ids": f"{ids[0]},{ids[1]}", "x": "time"}).status_code == 400


def test_map_to_x_interpolates_between_reports_and_drops_points_past_the_last() -> None:
    x_points = [(2, 20.0), (4, 60.0)]
    assert map_to_x([[1, 1.0], [2, 2.0], [3, 3.0], [4, 4.0], [5, 5.0]], x_points) == [
        [10.0, 1.0],
        [20.0, 2.0],
        [40.0, 3.0],
        [60.0, 4.0],
    ]
    assert map_to_x([[1, 1.0]], []) == []


# ---------------------------------------------------------------------------------------------- stream


def test_one_stream_carries_every_run_then_only_new_points_and_ends_when_all_finished(
    live_server: Any, session_factory: sessionmaker[Session], move_job: Any
) -> None:
    a = make_run(session_factory, {"name": "live"})
    b = make_run(session_factory, {"name": "done"})
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        post_events(http, a, metrics(1, range(1, 4), loss=lambda s: 2.0 / s))
        post_events(http, b, metrics(1, range(1, 3), loss=lambda s: 1.0))
        move_job(b, JobStatus.SUCCEEDED)
        with http.stream("GET", "/api/compare/stream", params={"ids": f"{a},{b}"}) as response:
            assert response.status_code == 200
            messages = sse_messages(response)
            first = collect_until(
                messages, lambda got: {m.data["job_id"] for m in got if "series" in m.data} == {a, b}
            )
            history = {m.data["job_id"]: m.data["series"]["loss"] for m in first if "series" in m.data}
            assert [s for s, _ in history[a]] == [1, 2, 3]
            assert [s for s, _ in history[b]] == [1, 2]
            rows = {m.data["job_id"]: m.data["row"] for m in first if "row" in m.data}
            assert rows[b]["status"] == "succeeded" and rows[a]["best_loss"] == pytest.approx(2.0 / 3)
            resume_id = first[-1].id
            assert resume_id is not None and f"{a}:" in resume_id and f"{b}:" in resume_id

            post_events(http, a, metrics(4, range(4, 6), loss=lambda s: 0.1 * s))
            more = collect_until(messages, lambda got: any("series" in m.data for m in got))
            new = [m.data for m in more if "series" in m.data]
            assert new[0]["job_id"] == a
            assert [s for s, _ in new[0]["series"]["loss"]] == [4, 5]  # only what is new

            move_job(a, JobStatus.SUCCEEDED)
            rest = collect_until(messages, lambda got: any(m.event == "end" for m in got))
            assert any(m.data.get("row", {}).get("status") == "succeeded" for m in rest if m.event == "run")
        # a reconnect with the last id sends nothing old again: only rows, then the end
        with http.stream(
            "GET", "/api/compare/stream", params={"ids": f"{a},{b}"}, headers={"Last-Event-ID": resume_id}
        ) as response:
            again = collect_until(sse_messages(response), lambda got: any(m.event == "end" for m in got))
            resent = [m.data for m in again if m.event == "run" and "series" in m.data]
            assert resent == [
                {"job_id": a, "series": {"loss": [[4, 0.4], [5, 0.5]]}, "row": resent[0]["row"]}
            ]


def test_the_compare_stream_refuses_a_bad_selection_before_streaming(client: TestClient) -> None:
    assert client.get("/api/compare/stream", params={"ids": "1"}).status_code == 400
    assert client.get("/api/compare/stream", params={"group": "no-such-group"}).status_code == 404


# ---------------------------------------------------------------------------------------------- page


def test_the_compare_page_renders_the_state_of_a_shared_url(
    client: TestClient, three_runs: list[int]
) -> None:
    a, b, c = three_runs
    page = client.get(f"/compare?ids={a},{b},{c}&metric=eval_loss&x=epoch&diff=0")
    assert page.status_code == 200
    doc = Elements(page.text)
    (metric_select,) = doc.find(id="metric-picker")
    selected = re.findall(r'<option value="([^"]+)" selected', page.text)
    assert selected == ["eval_loss", "epoch"]
    assert doc.find(name_="ids", type="hidden")[0]["value"] == f"{a},{b},{c}"
    share = doc.find(id="share-link")[0]["href"]
    assert share == f"/compare?ids={a},{b},{c}&metric=eval_loss&x=epoch&diff=0"
    # nobody reports epochs here: every legend entry says "no data" (an x axis a run lacks is not an error)
    legend = {
        li["data-run"]: li
        for li in doc.find()
        if "data-run" in li and "class" in li and "no-data" in li["class"]
    }
    assert set(legend) == {str(a), str(b), str(c)}
    # all config keys shown (diff=0), the changed ones marked
    rows = [t for t in doc.find() if "data-key" in t]
    assert not any("hidden" in t for t in rows)
    assert {t["data-key"] for t in rows if t["class"] == "differs"} == {
        "name",
        "training.learning_rate",
        "lora.r",
    }
    # the summary table has one row per run, in order, with its numbers
    summary = page.text.split('id="compare-summary"')[1]
    assert (
        summary.index(f'id="compare-row-{a}"')
        < summary.index(f'id="compare-row-{b}"')
        < summary.index(f'id="compare-row-{c}"')
    )
    row_b = summary.split(f'id="compare-row-{b}"')[1].split("</tr>")[0]
    assert 'data-field="best_loss" data-format="num">1.2<' in row_b
    assert 'data-field="guard_events">2<' in row_b
    # one stream for the whole page
    assert f'data-stream="/api/compare/stream?ids={a},{b},{c}"' in page.text


def test_the_compare_page_defaults_to_loss_and_differences_only(
    client: TestClient, three_runs: list[int]
) -> None:
    a, b, c = three_runs
    page = client.get(f"/compare?ids={a},{b},{c}")
    doc = Elements(page.text)
    assert re.findall(r'<option value="([^"]+)" selected', page.text) == ["loss", "step"]
    same = [t for t in doc.find() if t.get("class") == "same"]
    assert same and all("hidden" in t for t in same)
    assert doc.find(id="diff-only")[0].get("checked") == ""
    # c reports loss but no tokens_seen; everyone has loss on the step axis
    assert not [t for t in doc.find() if "no-data" in t.get("class", "")]


def test_ticked_checkboxes_redirect_to_the_short_shareable_url(
    client: TestClient, three_runs: list[int]
) -> None:
    a, b, _c = three_runs
    r = client.get(f"/compare?ids={b}&ids={a}&metric=loss", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/compare?ids={a},{b}&metric=loss"
    jobs_list = Elements(client.get("/").text)
    boxes = jobs_list.find(type="checkbox", name_="ids", form="compare-form")
    assert {b["value"] for b in boxes} >= {str(a), str(b)}
    assert jobs_list.find(id="compare-form", action="/compare", method="get")


def test_a_compare_page_of_one_run_or_an_unknown_run_explains_itself(
    client: TestClient, three_runs: list[int]
) -> None:
    a = three_runs[0]
    one = client.get(f"/compare?ids={a}")
    assert one.status_code == 400 and "2 to 8 runs" in one.text
    missing = client.get(f"/compare?ids={a},4242")
    assert missing.status_code == 404 and "4242" in missing.text


def test_compare_pages_answer_quickly_enough_for_eight_long_runs(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    ids = [make_run(session_factory, {"name": f"long {i}"}) for i in range(8)]
    for job_id in ids:
        post_events(
            client, job_id, metrics(1, range(1, 1201), loss=lambda s: 1.0 / s, tokens_seen=lambda s: 64 * s)
        )
    started = time.perf_counter()
    r = client.get(
        "/api/compare",
        params={"ids": ",".join(map(str, ids)), "metrics": "loss", "x": "tokens_seen", "max_points": 500},
    )
    elapsed = time.perf_counter() - started
    assert r.status_code == 200
    assert all(len(points) <= 500 for points in r.json()["series"]["loss"].values())
    assert elapsed < 3.0, f"compare of 8 × 1200 points took {elapsed:.2f}s"


def test_distinguishing_labels_name_only_what_differs() -> None:
    from app.compare.labels import distinguishing_labels

    table = {
        "name": {1: "sweep · a", 2: "sweep · b"},
        "training.learning_rate": {1: 0.0002, 2: 0.0005},
        "lora.r": {1: 8, 2: 8},
        "lora.alpha": {1: 16, 2: 32},
        "dataset.max_seq_len": {1: 256, 2: 256},
    }
    differing = ["name", "training.learning_rate", "lora.alpha"]
    assert distinguishing_labels(table, differing) == {
        1: "learning_rate=0.0002 · alpha=16",
        2: "learning_rate=0.0005 · alpha=32",
    }
    # two keys with the same last part keep enough of their path to differ; more than three: "+N more"
    clash = {"a.r": {1: 1, 2: 2}, "b.r": {1: 3, 2: 4}, "c": {1: 5, 2: 6}, "d": {1: 7, 2: 8}}
    assert distinguishing_labels(clash, list(clash))[1] == "a.r=1 · b.r=3 · c=5 · +1 more"
    assert distinguishing_labels(table, ["name"]) == {1: "", 2: ""}
