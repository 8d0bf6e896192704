"""Sweeps: a grid over one or two config fields becomes a group of queued jobs, or nothing at all."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.app.test_pages import Elements


def job_count(client: TestClient) -> int:
    return len(client.get("/api/jobs").json())


def base_job(client: TestClient, **config: Any) -> int:
    r = client.post("/api/jobs", json={"name": "base", "training": {"max_steps": 40}, **config})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def test_a_two_by_two_sweep_queues_four_jobs_in_one_group_with_each_combination(client: TestClient) -> None:
    parent = base_job(client)
    r = client.post(
        f"/api/jobs/{parent}/sweep", json={"training.learning_rate": [1e-4, 2e-4], "lora.r": [8, 16]}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body["job_ids"]) == 4
    jobs = [client.get(f"/api/jobs/{i}").json() for i in body["job_ids"]]
    combos = {(j["config"]["training"]["learning_rate"], j["config"]["lora"]["r"]) for j in jobs}
    assert combos == {(1e-4, 8), (1e-4, 16), (2e-4, 8), (2e-4, 16)}
    for j in jobs:
        assert j["status"] == "queued"
        assert j["group_id"] == body["group_id"]
        assert j["parent_job_id"] == parent
        assert j["config"]["training"]["max_steps"] == 40  # everything else is the parent's
        lr, rank = j["config"]["training"]["learning_rate"], j["config"]["lora"]["r"]
        assert j["name"] == f"base · learning_rate={lr:g}, r={rank}"
    assert client.get(f"/api/jobs/{parent}").json()["group_id"] is None
    # the group compares its members; their config differences are the swept keys (and the names)
    compare = client.get("/api/compare", params={"group": body["group_id"], "metrics": "loss"}).json()
    assert [run["id"] for run in compare["runs"]] == body["job_ids"]
    assert set(compare["config_diff"]) == {"name", "training.learning_rate", "lora.r"}
    # the jobs list links each member (and only members) to the group page
    links = Elements(client.get("/").text).find(href=f"/groups/{body['group_id']}")
    assert len(links) == 4 and not any("hidden" in link for link in links)


def test_invalid_sweep_values_are_refused_naming_field_and_value_and_create_nothing(
    client: TestClient,
) -> None:
    parent = base_job(client)
    before = job_count(client)
    r = client.post(f"/api/jobs/{parent}/sweep", json={"training.learning_rate": [1e-4, 5], "lora.r": [8, 0]})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert (
        "value 5" in problems["training.learning_rate"] and "at most 1" in problems["training.learning_rate"]
    )
    assert "value 0" in problems["lora.r"] and "at least 1" in problems["lora.r"]
    cases: list[tuple[Any, str]] = [
        ({"training.learnig_rate": [1e-4]}, "training.learnig_rate"),
        ({"training.learning_rate": []}, "training.learning_rate"),
        ({"training.learning_rate": 1e-4}, "training.learning_rate"),
        ({"training.batch_size": ["lots"]}, "training.batch_size"),
        ({"training.learning_rate": [1e-4, 0.0001]}, "training.learning_rate"),  # the same job twice
        ({"training.max_seq_len": [128, 999_999]}, "training.max_seq_len"),  # beyond the preset model
        ({"a.b": [1], "c.d": [2], "e.f": [3]}, ""),
        ({}, ""),
        ([1, 2], ""),
    ]
    for axes, field in cases:
        r = client.post(f"/api/jobs/{parent}/sweep", json=axes)
        assert r.status_code == 422, (axes, r.text)
        assert field in r.json()["problems"], (axes, r.json())
    assert job_count(client) == before


def test_a_sweep_over_the_cap_is_refused_with_the_count(client: TestClient) -> None:
    parent = base_job(client)
    r = client.post(
        f"/api/jobs/{parent}/sweep",
        json={"training.seed": list(range(11)), "lora.r": [4, 8, 16]},
    )
    assert r.status_code == 422
    assert "33 jobs" in r.json()["detail"] and "32" in r.json()["detail"]
    assert job_count(client) == 1
    assert client.post("/api/jobs/999/sweep", json={"lora.r": [8]}).status_code == 404


def test_the_sweep_form_on_the_detail_page_queues_the_group_and_opens_its_page(client: TestClient) -> None:
    parent = base_job(client)
    detail = Elements(client.get(f"/jobs/{parent}").text)
    assert detail.find(id="sweep-form", method="post", action=f"/jobs/{parent}/sweep")
    assert detail.find(name_="field1") and detail.find(name_="values2")
    form = {
        "field1": "training.learning_rate",
        "values1": "1e-4, 3e-4",
        "field2": "lora.r",
        "values2": "8,16",
    }
    r = client.post(f"/jobs/{parent}/sweep", data=form, follow_redirects=False)
    assert r.status_code == 303
    group_url = r.headers["location"]
    assert group_url.startswith("/groups/sweep-")
    group = client.get(group_url)
    assert group.status_code == 200
    doc = Elements(group.text)
    rows = [t["id"] for t in doc.find() if t.get("id", "").startswith("compare-row-")]
    assert len(rows) == 4
    assert "/api/compare/stream?group=" in group.text
    assert {"training.learning_rate", "lora.r"} <= {
        t["data-key"] for t in doc.find() if t.get("class") == "differs"
    }
    member = client.get(f"/jobs/{rows[0].removeprefix('compare-row-')}")
    assert f'href="{group_url}"' in member.text


def test_a_refused_sweep_form_shows_the_message_at_the_values_and_creates_nothing(client: TestClient) -> None:
    parent = base_job(client)
    form = {"field1": "training.learning_rate", "values1": "1e-4, 7", "field2": "", "values2": ""}
    r = client.post(f"/jobs/{parent}/sweep", data=form)
    assert r.status_code == 422
    doc = Elements(r.text)
    assert "value '7'" in doc.text_by_id["sweep-values1-error"]
    assert doc.find(id="sweep-values1")[0]["value"] == "1e-4, 7"  # what was typed stays
    assert doc.find(id="sweep-values1")[0]["aria-invalid"] == "true"
    r = client.post(f"/jobs/{parent}/sweep", data={"field1": "", "values1": "1"})
    assert r.status_code == 422 and "pick the field" in Elements(r.text).text_by_id["sweep-field1-error"]
    assert job_count(client) == 1


def test_an_unknown_group_page_is_a_404_that_says_so(client: TestClient) -> None:
    r = client.get("/groups/sweep-0-nothing")
    assert r.status_code == 404 and "sweep-0-nothing" in r.text
