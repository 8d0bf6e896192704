"""The jobs pages after the split: each vocabulary once, stored configs read through one typed reader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.status import JobStatus
from app.models import Job
from contract.config import CONFIG_VERSION_KEY
from contract.metrics import PANELS, panel_metrics, panels_for
from tests.app.conftest import make_started_job, metric_event, set_status
from tests.app.test_pages import Elements

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer test-token"}


def test_the_job_page_draws_one_chart_card_per_panel_of_the_metric_table(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    job_id = make_started_job(session_factory)
    doc = Elements(client.get(f"/jobs/{job_id}").text)
    cards = [a["data-chart"] for a in doc.find() if "data-chart" in a]
    drawn = panels_for("sft")  # an SFT job: the preference methods' panels are left out
    assert cards == [p.id for p in drawn] and len(drawn) < len(PANELS)
    for panel in drawn:
        assert doc.find(id=f"chart-{panel.id}"), panel.id
        toggles = doc.find(**{"data-log-toggle": panel.id})
        assert toggles, f"{panel.id} offers no log scale"  # every panel offers one
    assert [m.key for m in panel_metrics("loss")] == ["loss", "eval_loss"]


def test_the_buttons_of_a_cancelling_job_follow_the_status_sets(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    job_id = make_started_job(session_factory)
    set_status(session_factory, job_id, JobStatus.RUNNING)
    set_status(session_factory, job_id, JobStatus.CANCELLING)
    doc = Elements(client.get(f"/jobs/{job_id}").text)
    (cancel,) = doc.find(**{"data-action": "cancel"})
    (resume,) = doc.find(**{"data-action": "resume"})
    assert "hidden" in cancel and "hidden" in resume  # already stopping; not stopped yet
    eta = re.search(
        r'data-field="eta_seconds" data-format="duration">([^<]*)<', client.get(f"/jobs/{job_id}").text
    )
    assert eta is not None and eta.group(1) == "—"


def test_the_page_formats_numbers_with_the_shared_rules(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    job_id = make_started_job(session_factory)
    set_status(session_factory, job_id, JobStatus.RUNNING)
    r = client.post(
        f"/api/jobs/{job_id}/events",
        json={"events": [metric_event(1, 1, loss=0.0001, tokens_per_second=1234.0)]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    html = client.get(f"/jobs/{job_id}").text
    assert 'data-field="last_loss" data-format="num">1.000e-4<' in html
    assert 'data-field="tokens_per_second" data-format="num">1,234<' in html


def test_cloning_a_row_that_carries_its_config_version_prefills_the_form_from_it(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    source = client.post(
        "/api/jobs", json={"name": "versioned", "training": {"learning_rate": 0.0003}}
    ).json()["id"]
    with session_factory() as session:
        job = session.get(Job, source)
        assert job is not None
        job.config = {**job.config, CONFIG_VERSION_KEY: 1}  # as a later app version will write rows
        session.commit()
    doc = Elements(client.get(f"/jobs/new?from={source}").text)
    assert doc.find(id="f-training-learning_rate")[0]["value"] == "0.0003"
    assert doc.find(id="f-name")[0]["value"] == "versioned"


def _picker_options(html: str) -> list[str]:
    picker = html.split('id="metric-picker"')[1].split("</select>")[0]
    return re.findall(r'<option value="([^"]+)"', picker)


def test_the_compare_picker_offers_metrics_in_the_job_pages_panel_order(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    ids = []
    for name in ("a", "b"):
        job_id = make_started_job(session_factory, name=name)
        set_status(session_factory, job_id, JobStatus.RUNNING)
        values: dict[str, Any] = {
            "loss": 1.0,
            "rss_gb": 1.0,
            "vram_peak_gb": 1.0,
            "vram_allocated_gb": 1.0,
            "gpu_power_w": 1.0,
            "zeta": 1.0,
        }
        r = client.post(
            f"/api/jobs/{job_id}/events", json={"events": [metric_event(1, 1, **values)]}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        ids.append(job_id)
    options = _picker_options(client.get(f"/compare?ids={ids[0]},{ids[1]}").text)
    assert options == [
        "loss",
        "eval_loss",
        "vram_allocated_gb",
        "vram_peak_gb",
        "rss_gb",
        "gpu_power_w",
        "zeta",
    ]


def test_the_estimate_route_is_part_of_the_jobs_api_and_answers_as_before(client: TestClient) -> None:
    from app.jobs import api

    assert any(getattr(r, "path", "") == "/api/estimate" for r in api.router.routes)
    r = client.post("/api/estimate", content=json.dumps({"training": {"batch_size": 2}}))
    assert r.status_code == 200 and {"total_gb", "breakdown", "notes"} <= set(r.json())
    bad = client.post("/api/estimate", content="not json")
    assert bad.status_code == 422 and bad.json()["problems"] == {
        "": "the body is not valid JSON; send the config"
    }
    assert "/api/estimate" not in client.get("/openapi.json").json()["paths"]  # hidden from /docs, as it was
