"""Preference tuning in the app's pages: the form shows the method's fields, a finished SFT job offers
"Preference-tune this run", a preference job draws its panels, a sweep over beta plans.

The training path (an SFT job, then DPO from its adapter) is in test_preference_training_jobs.py."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.jobs.status import JobStatus


def _field(html: str, path: str) -> str:
    """The opening tag of one form field's wrapper div."""
    input_id = "f-" + path.replace(".", "-")
    start = html.index(f'id="{input_id}"')
    return html[html.rindex('<div class="field', 0, start) : start]


def test_the_form_shows_only_the_chosen_methods_fields(client: TestClient, started_job, move_job) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/jobs/new").text
    assert 'id="f-method"' in page and 'id="f-init_adapter"' in page
    assert " hidden" in _field(page, "preference.beta")  # method sft: no preference fields
    job_id = started_job()
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
        move_job(job_id, status)
    detail = client.get(f"/jobs/{job_id}").text
    assert f'href="/jobs/new?from={job_id}&amp;tune=dpo"' in detail and "Preference-tune this run" in detail
    assert 'data-chart="reward_accuracy"' not in detail  # an SFT job draws no preference charts
    form = client.get(f"/jobs/new?from={job_id}&tune=dpo").text
    assert re.search(r'<option value="dpo"\s+selected', form), "method dpo is chosen"
    assert f'value="job:{job_id}"' in form
    assert " hidden" not in _field(form, "preference.beta")
    assert " hidden" not in _field(form, "preference.loss_type")
    assert " hidden" in _field(form, "preference.desirable_weight")  # a KTO field


def test_a_preference_job_page_draws_the_methods_panels(client: TestClient, session_factory) -> None:  # type: ignore[no-untyped-def]
    from app.jobs import service
    from contract.config import parse_config

    with session_factory() as session:
        cfg = parse_config({"method": "kto", "dataset": {"source": "preset:uppercase-preference"}})
        job = service.create_job(session, config=cfg, config_text="method: kto\n")
        session.commit()
        job_id = job.id
    page = client.get(f"/jobs/{job_id}").text
    for panel in ("rewards", "reward_margins", "reward_accuracy", "logps", "kl"):
        assert f'data-chart="{panel}"' in page, panel
    assert 'data-chart="odds_ratio"' not in page  # ORPO's
    assert "Preference-tune this run" not in page  # not an SFT job, and not finished


def test_a_sweep_over_beta_plans_one_job_per_value() -> None:
    from app.models import Job
    from app.sweeps.service import plan_sweep
    from contract.config import config_to_dict, parse_config

    job = Job(config=config_to_dict(parse_config({"method": "dpo"})))
    members = plan_sweep(job, {"preference.beta": [0.05, 0.5]})
    assert [m.config.preference.beta for m in members] == [0.05, 0.5]
    assert all(m.config.method == "dpo" for m in members)


def test_try_preference_tuning_fills_in_a_dpo_job_on_the_generated_pairs(client: TestClient) -> None:
    page = client.get("/jobs/new").text
    assert 'href="/jobs/new?preset=preference"' in page
    form = client.get("/jobs/new?preset=preference").text
    assert re.search(r'<option value="dpo"\s+selected', form)
    assert 'value="preset:uppercase-preference"' in form
