"""The SSE streams, against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from app.jobs.status import JobStatus
from tests.waiting import stopped_changing, wait_until

AUTH = {"Authorization": "Bearer test-token"}


@dataclass
class Message:
    event: str
    data: Any
    id: str | None


def sse_messages(response: httpx.Response) -> Iterator[Message]:
    """Parse an SSE response into messages (comments and retry lines are skipped)."""
    event, data, ident = "message", [], None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield Message(event, json.loads("\n".join(data)), ident)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value


def ingest(url: str, job_id: int, events: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{url}/api/jobs/{job_id}/events", json={"events": events}, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text


def metric(seq: int, step: int, **values: float) -> dict[str, Any]:
    return {"seq": seq, "kind": "metric", "step": step, "ts": 1.0, "payload": values}


def log(seq: int, message: str) -> dict[str, Any]:
    return {"seq": seq, "kind": "log", "step": 0, "ts": 1.0, "payload": {"level": "info", "message": message}}


def collect_until(messages: Iterator[Message], done: Any, timeout: float = 10.0) -> list[Message]:
    """Read messages until done(collected) is true; fail after `timeout` seconds."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    for msg in messages:
        got.append(msg)
        if done(got):
            return got
        assert time.monotonic() < deadline, f"stream did not deliver in time; got {[m.event for m in got]}"
    raise AssertionError(f"stream ended early; got {[(m.event, m.data) for m in got]}")


def points(msgs: list[Message], key: str) -> list[list[Any]]:
    return [p for m in msgs if m.event == "metrics" for p in m.data["series"].get(key, [])]


def test_metrics_and_events_arrive_after_an_ingest_post(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    with httpx.stream("GET", f"{live_server.url}/api/jobs/{job_id}/stream", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(r)
        first = next(messages)
        assert first.event == "job" and first.data["status"] == "starting"
        ingest(
            live_server.url,
            job_id,
            [{"seq": 1, "kind": "status", "step": 0, "ts": 1.0, "payload": {"status": "running"}}]
            + [metric(2, 1, loss=2.0), metric(3, 2, loss=1.5), log(4, "hello")],
        )
        got = collect_until(
            messages,
            lambda ms: (
                points(ms, "loss") == [[1, 2.0], [2, 1.5]]
                and any(m.event == "events" for m in ms)
                and any(m.event == "job" and m.data["status"] == "running" for m in ms)
            ),
        )
        evs = [e for m in got if m.event == "events" for e in m.data]
        assert [e["payload"]["message"] for e in evs if e["kind"] == "log"] == ["hello"]
        assert got[-1].id is not None


def test_last_event_id_resumes_without_duplicates(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    ingest(live_server.url, job_id, [metric(i, i, loss=10.0 - i) for i in range(1, 6)] + [log(6, "one")])
    url = f"{live_server.url}/api/jobs/{job_id}/stream"
    with httpx.stream("GET", url, timeout=10) as r:
        got = collect_until(
            sse_messages(r),
            lambda ms: len(points(ms, "loss")) == 5 and any(m.event == "events" for m in ms),
        )
    last_id = got[-1].id
    assert last_id == "6.5"
    ingest(live_server.url, job_id, [metric(7, 5, eval_loss=4.0), metric(8, 6, loss=3.0), log(9, "two")])
    ingest(live_server.url, job_id, [metric(10, 7, loss=2.0)])
    with httpx.stream("GET", url, headers={"Last-Event-ID": last_id}, timeout=10) as r:
        resumed = collect_until(
            sse_messages(r),
            lambda ms: [p[0] for p in points(ms, "loss")] == [6, 7] and any(m.event == "events" for m in ms),
        )
    assert [p[0] for p in points(resumed, "loss")] == [6, 7]  # nothing from before the cursor again
    evs = [e["payload"]["message"] for m in resumed if m.event == "events" for e in m.data]
    assert evs == ["two"]


def test_a_key_that_arrives_later_for_the_same_step_still_goes_out(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    with httpx.stream("GET", f"{live_server.url}/api/jobs/{job_id}/stream", timeout=10) as r:
        messages = sse_messages(r)
        ingest(live_server.url, job_id, [metric(1, 20, loss=1.0)])
        collect_until(messages, lambda ms: points(ms, "loss") == [[20, 1.0]])
        ingest(live_server.url, job_id, [metric(2, 20, eval_loss=1.2), metric(3, 21, loss=0.9)])
        got = collect_until(messages, lambda ms: points(ms, "loss") == [[21, 0.9]])
        assert points(got, "eval_loss") == [[20, 1.2]]


def test_the_stream_ends_after_the_final_state_of_a_finished_job(live_server, started_job, move_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    ingest(live_server.url, job_id, [metric(1, 1, loss=1.0)])
    with httpx.stream("GET", f"{live_server.url}/api/jobs/{job_id}/stream", timeout=10) as r:
        messages = sse_messages(r)
        collect_until(messages, lambda ms: points(ms, "loss") == [[1, 1.0]])
        move_job(job_id, JobStatus.FAILED, reason="out of memory")
        rest = list(messages)  # returns only because the server closes the stream
    assert [m.event for m in rest][-2:] == ["job", "end"]
    assert rest[-2].data["status"] == "failed"
    assert rest[-2].data["failure_reason"] == "out of memory"


def test_the_stream_closes_at_its_lifetime_cap(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    live_server.settings.sse_max_lifetime_s = 0.5
    job_id = started_job()
    start = time.monotonic()
    with httpx.stream("GET", f"{live_server.url}/api/jobs/{job_id}/stream", timeout=10) as r:
        msgs = list(sse_messages(r))
    assert time.monotonic() - start < 5
    assert [m.event for m in msgs] == ["job"]  # no `end`: the job is still live and the client reconnects


def test_an_unknown_job_stream_is_404(live_server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{live_server.url}/api/jobs/404/stream", timeout=10).status_code == 404


def test_the_jobs_list_stream_sends_changed_jobs(live_server) -> None:  # type: ignore[no-untyped-def]
    first_id = httpx.post(f"{live_server.url}/api/jobs", json={"name": "a"}, timeout=10).json()["id"]
    with httpx.stream("GET", f"{live_server.url}/api/stream", timeout=10) as r:
        messages = sse_messages(r)
        initial = next(messages)
        assert initial.event == "jobs" and [j["id"] for j in initial.data] == [first_id]
        second_id = httpx.post(f"{live_server.url}/api/jobs", json={"name": "b"}, timeout=10).json()["id"]
        got = collect_until(messages, lambda ms: any(j["id"] == second_id for m in ms for j in m.data))
        assert all(j["id"] != first_id for m in got for j in m.data)  # unchanged jobs are not resent
        httpx.post(f"{live_server.url}/api/jobs/{first_id}/cancel", timeout=10)
        got = collect_until(messages, lambda ms: any(j["id"] == first_id for m in ms for j in m.data))
        assert [j["status"] for m in got for j in m.data if j["id"] == first_id] == ["cancelled"]


def test_metrics_history_gives_a_cursor_the_stream_continues_from(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    ingest(live_server.url, job_id, [metric(i, i, loss=float(i)) for i in range(1, 4)] + [log(4, "x")])
    history = httpx.get(f"{live_server.url}/api/jobs/{job_id}/metrics", timeout=10).json()
    assert history["cursor"] == "4.3"
    ingest(live_server.url, job_id, [metric(5, 4, loss=4.0)])
    url = f"{live_server.url}/api/jobs/{job_id}/stream?cursor={history['cursor']}"
    with httpx.stream("GET", url, timeout=10) as r:
        got = collect_until(sse_messages(r), lambda ms: bool(points(ms, "loss")))
    assert points(got, "loss") == [[4, 4.0]]


def test_the_stream_stops_polling_when_the_client_goes_away(live_server, started_job, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from app.metrics import hub

    polls: list[float] = []
    real_tick = hub.JobHub.tick

    def counting_tick(*args: Any) -> Any:
        polls.append(time.monotonic())
        return real_tick(*args)

    monkeypatch.setattr(hub.JobHub, "tick", counting_tick)
    job_id = started_job()
    with httpx.stream("GET", f"{live_server.url}/api/jobs/{job_id}/stream", timeout=10) as r:
        messages = sse_messages(r)
        assert next(messages).event == "job"
        wait_until(lambda: len(polls), 5, "three polls while connected", until=lambda n: n >= 3)
    assert len(polls) >= 3  # it was polling every ~50 ms while connected
    # the server notices the disconnect: the count stops moving (sampled slower than the ~50 ms polls)
    settled = wait_until(stopped_changing(lambda: len(polls)), 5, "the polls to stop", interval=0.2).value
    time.sleep(0.5)  # a window in which no poll may come: that it stays quiet is what is under test
    assert len(polls) == settled, "the stream kept polling the database after the client disconnected"
    # the engine's pool has nothing checked out once the stream is gone: no session outlived its poll
    assert live_server.app.state.engine.pool.checkedout() == 0


def test_each_message_id_covers_only_what_was_sent_up_to_it(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()
    ingest(live_server.url, job_id, [metric(1, 1, loss=1.0), log(2, "a")])
    url = f"{live_server.url}/api/jobs/{job_id}/stream"
    with httpx.stream("GET", url, headers={"Last-Event-ID": "0.0"}, timeout=10) as r:
        got = collect_until(sse_messages(r), lambda ms: any(m.event == "events" for m in ms))
    ids = {m.event: m.id for m in got}
    # a client that saw only the job message resumes at 0.0, one that saw the metrics too at 0.1
    assert ids == {"job": "0.0", "metrics": "0.1", "events": "2.1"}


def test_an_idle_stream_sends_pings(live_server, started_job) -> None:  # type: ignore[no-untyped-def]
    job_id = started_job()  # settings.sse_ping_interval_s is 0.5 in the test settings
    start = time.monotonic()
    with httpx.stream("GET", f"{live_server.url}/api/jobs/{job_id}/stream", timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith(": ping"):
                break
            assert time.monotonic() - start < 5, "no ping within 5 s on an idle stream"
    assert 0.4 < time.monotonic() - start < 5
