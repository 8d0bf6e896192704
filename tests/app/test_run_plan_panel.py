"""The job page's "how this run ran" panel (app/jobs/run_plan.py) and the form's speed levers."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from contract.plan import RunPlan
from tests.app.test_pages import Elements, event, form_data, post_events


def test_the_job_page_shows_every_lever_of_the_reported_plan_and_why(
    client: TestClient, started_job: Any
) -> None:
    job_id = started_job(name="planned run")
    before = Elements(client.get(f"/jobs/{job_id}").text)
    assert "No plan yet." in before.text_by_id["run-plan"]
    plan = RunPlan(device="cpu", overrides={"altup_sum": "on"})
    plan.set("host_tables", False, "default", "default off on CPU (the tables are in host memory already)")
    plan.set("altup_sum", True, "override", "benchmark override altup_sum=on")
    plan.set("micro_batch", "8 × 1", "config", "set in config (training.batch_size 8 × grad_accum 1)")
    post_events(client, job_id, [event(1, "plan", 0, **plan.to_dict())])
    page = client.get(f"/jobs/{job_id}")
    panel = Elements(page.text).text_by_id["run-plan"]
    assert "How this run ran" in panel and "on cpu" in panel
    assert "host tables" in panel and "default off on CPU (the tables are in host memory already)" in panel
    assert "8 × 1" in panel and "set in config (training.batch_size 8 × grad_accum 1)" in panel
    # a benchmark's override is never silent
    assert "benchmark override altup_sum=on" in panel and "A benchmark forced 1 lever(s)" in panel
    assert 'data-lever="altup sum"' in page.text and 'class="plan-override"' in page.text


def test_a_plan_the_app_cannot_read_shows_as_absent_not_as_an_error(
    client: TestClient, started_job: Any
) -> None:
    job_id = started_job()
    post_events(client, job_id, [event(1, "plan", 0, version=99, levers="nonsense")])
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "No plan yet." in Elements(page.text).text_by_id["run-plan"]


def test_the_form_offers_the_speed_levers_in_a_collapsed_advanced_part(client: TestClient) -> None:
    page = client.get("/jobs/new")
    doc = Elements(page.text)
    advanced = doc.find(id="advanced-speed")
    assert advanced and "open" not in advanced[0]
    assert doc.find(name_="speed.host_tables") and doc.find(name_="speed.fused_loss_chunk_rows")
    created = client.post("/jobs/new", data=form_data(speed__host_tables="off"), follow_redirects=False)
    assert created.status_code == 303, created.text[-2000:]
    job_id = int(created.headers["location"].rsplit("/", 1)[1])
    assert client.get(f"/api/jobs/{job_id}").json()["config"]["speed"]["host_tables"] == "off"
    refused = client.post("/jobs/new", data=form_data(speed__offload_activations="maybe"))
    assert refused.status_code == 422
    assert "open" in Elements(refused.text).find(id="advanced-speed")[0]
