"""Property-based fuzzing of every REST operation from the OpenAPI schema: no input may cause a 5xx.

Schemathesis generates valid and invalid requests (wrong types, missing fields, odd strings, huge numbers)
for each operation, and the app must answer each with a 2xx/3xx/4xx: once with auth off (the loopback
default) and once with auth on (an API token on every request, the job's own token on the worker routes,
so the requests reach the routes instead of stopping at the 401). The SSE streams are left out (they never
end on their own; tests/app/metrics/test_stream.py covers them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from app.auth.middleware import is_worker_route
from app.auth.store import create_token
from app.jobs.status import JobStatus
from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_started_job, set_status

EXAMPLES_PER_OPERATION = 12


AUTH_MODES = ("auth-off", "auth-on")


def _operations() -> list[tuple[str, GenerationMode, bool]]:
    """(label, mode, on_known_job) for every operation in the schema (read without starting the app).

    The negative mode only where the operation takes input to get wrong; operations on one job run a
    second time on a real job (with its worker token), since random ids mostly meet a 404 early.
    """
    spec = create_app(Settings(scheduler_enabled=False)).openapi()
    cases = []
    for path, methods in spec["paths"].items():
        if path.endswith("stream"):
            continue
        for method, operation in methods.items():
            label = f"{method.upper()} {path}"
            params = operation.get("parameters", [])
            body = "requestBody" in operation
            # any text is a valid free-form path segment: only other inputs can be made invalid
            can_be_wrong = [p for p in params if not _free_text_path_param(p)]
            cases.append((label, GenerationMode.POSITIVE, False))
            if can_be_wrong or body:
                cases.append((label, GenerationMode.NEGATIVE, False))
            if "{job_id}" in path:
                cases.append((label, GenerationMode.POSITIVE, True))
                if body or any(p["name"] != "job_id" for p in can_be_wrong):
                    cases.append((label, GenerationMode.NEGATIVE, True))
    return cases


def _free_text_path_param(param: dict[str, Any]) -> bool:
    schema = param.get("schema", {})
    return param.get("in") == "path" and schema.get("type") == "string" and len(schema) <= 2


def _case_id(value: object) -> str:
    if isinstance(value, bool):
        return "known-job" if value else "any-id"
    return str(getattr(value, "value", value))


@pytest.fixture(scope="module", params=AUTH_MODES)
def fuzz_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """One app per auth mode for the whole module (migrating per case would cost more than the fuzzing),
    with jobs in different states so small ids hit real rows. With auth on, app.state.fuzz_token holds an
    API token."""
    root = tmp_path_factory.mktemp("fuzz")
    data_dir = root / "data"
    data_dir.mkdir()
    app = create_app(Settings(data_dir=data_dir, scheduler_enabled=False))
    app.state.fuzz_token = create_token(data_dir, "fuzz") if request.param == "auth-on" else None
    with TestClient(app):
        factory = app.state.session_factory
        run_dir = root / "run"
        (run_dir / "adapter").mkdir(parents=True)
        (run_dir / "adapter" / "adapter_config.json").write_text("{}")
        (run_dir / "stderr.log").write_text("loading\n")
        make_started_job(factory, token="tok-1", run_dir=run_dir, name="one")
        second = make_started_job(factory, token="tok-2", name="two")
        set_status(factory, second, JobStatus.FAILED, reason="fuzz")
        make_started_job(factory, token="tok-3", name="three")
        yield app


@pytest.mark.parametrize(("label", "mode", "on_known_job"), _operations(), ids=_case_id)
def test_no_operation_answers_a_server_error(
    fuzz_app: FastAPI, label: str, mode: GenerationMode, on_known_job: bool
) -> None:
    api_token = fuzz_app.state.fuzz_token
    auth = {"headers": {"Authorization": f"Bearer {api_token}"}} if api_token else {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, **auth)
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the schema"
    seen: list[int] = []

    fixed: dict[str, Any] = {}
    method, _, path = label.partition(" ")
    worker_route = is_worker_route(method, path.replace("{job_id}", "1"))
    if on_known_job:
        # job 1 is running, has a run dir with an adapter, and its worker token is tok-1
        fixed = {"path_parameters": {"job_id": 1}}
    if on_known_job and (worker_route or api_token is None):
        fixed["headers"] = {"Authorization": "Bearer tok-1"}
    elif api_token is not None and not worker_route:
        fixed["headers"] = {"Authorization": f"Bearer {api_token}"}

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: CI failures reproduce locally
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        response = case.call()
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    try:
        fuzz()
    except Unsatisfiable:
        # every value of these inputs is valid (e.g. free-text path segments): no negative case exists
        assert mode is GenerationMode.NEGATIVE, f"no request could be generated for {label}"
        return
    assert seen, f"schemathesis generated no request for {label}"
    if api_token is not None:
        # the fuzzing must reach the routes, not only the login check in front of them
        assert set(seen) != {401}, f"every request to {label} was refused as unauthenticated"
