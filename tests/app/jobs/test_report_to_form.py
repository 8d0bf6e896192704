"""The new-job form's "Also report to" checkboxes: one per tracker, posted back as `report_to`."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.jobs.form import FORM_FIELDS, form_values_from_config
from contract.config import config_to_dict, parse_config


def _posted(**changes: object) -> dict[str, object]:
    values: dict[str, object] = dict(form_values_from_config(config_to_dict(parse_config({}))))
    values.update(changes)
    return {"mode": "fields", **values}


def test_the_form_has_one_labelled_checkbox_per_tracker(client: TestClient) -> None:
    page = client.get("/jobs/new").text
    boxes = re.findall(r'<input type="checkbox" id="(f-report_to-\w+)" name="report_to" value="(\w+)"', page)
    assert [value for _, value in boxes] == ["wandb", "mlflow", "tensorboard", "trackio"]
    for input_id, _ in boxes:
        assert f'<label class="check" for="{input_id}">' in page
    assert 'role="group" aria-labelledby="f-report_to-legend"' in page
    assert 'id="f-tracking-project"' in page and 'id="f-tracking-run_name"' in page


def test_checked_trackers_reach_the_job_config_and_come_back_checked_on_clone(client: TestClient) -> None:
    data = _posted(report_to=["wandb", "tensorboard"], **{"tracking.project": "team-runs"})
    r = client.post("/jobs/new", data=data, follow_redirects=False)  # type: ignore[arg-type]
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    config = client.get(f"/api/jobs/{job_id}").json()["config"]
    assert config["report_to"] == ["wandb", "tensorboard"]
    assert config["tracking"]["project"] == "team-runs"
    clone = client.get(f"/jobs/new?from={job_id}").text
    checked = re.findall(r'name="report_to" value="(\w+)" checked', clone)
    assert checked == ["wandb", "tensorboard"]


def test_no_box_checked_means_no_trackers(client: TestClient) -> None:
    data = _posted()
    data.pop("report_to")  # unchecked boxes send nothing at all
    r = client.post("/jobs/new", data=data, follow_redirects=False)  # type: ignore[arg-type]
    assert r.status_code == 303, r.text
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert client.get(f"/api/jobs/{job_id}").json()["config"]["report_to"] == []


def test_a_forged_tracker_name_is_refused_next_to_the_field(client: TestClient) -> None:
    r = client.post("/jobs/new", data=_posted(report_to=["wandbb"]))  # type: ignore[arg-type]
    assert r.status_code == 422
    assert "did you mean &#39;wandb&#39;?" in r.text or "did you mean 'wandb'?" in r.text
    assert 'data-error-for="report_to"' in r.text
    assert next(f for f in FORM_FIELDS if f.path == "report_to").kind == "checks"
