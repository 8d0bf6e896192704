"""docker-compose.yml is a valid Compose file (compose-spec JSON schema) that wires the roles as documented.

No Docker engine runs here: the file is checked against the Compose specification's JSON schema, which the
classic `docker-compose` 1.29.2 wheel on PyPI ships as compose/config/compose_spec.json (Apache-2.0). The
wheel is fetched with pip (no dependencies, nothing installed) into .venv/compose-schema once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_WHEEL_SPEC = "docker-compose==1.29.2"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
SCHEMA_CACHE = REPO_ROOT / ".venv" / "compose-schema"


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The compose-spec JSON schema, read from the docker-compose wheel (downloaded once with pip)."""
    wheels = sorted(SCHEMA_CACHE.glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        SCHEMA_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            + ["-d", str(SCHEMA_CACHE), COMPOSE_WHEEL_SPEC],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"pip could not fetch {COMPOSE_WHEEL_SPEC} for its schema: {done.stderr}"
        wheels = sorted(SCHEMA_CACHE.glob("docker_compose-1.29.2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        schema: dict[str, Any] = json.loads(wheel.read(SCHEMA_MEMBER))
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose reads it (YAML anchors and merge keys resolved)."""
    data: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


def test_the_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator = jsonschema.Draft201909Validator(compose_schema)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert problems == []


def test_the_schema_check_would_catch_a_misspelled_key(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["app"]["healthchek"] = broken["services"]["app"].pop("healthcheck")
    assert not jsonschema.Draft201909Validator(compose_schema).is_valid(broken)


def test_the_app_starts_only_after_the_one_shot_migration_succeeded(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["tuneboard", "db", "upgrade"]
    assert services["app"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # both use the same image and data volume, so the migration runs against the app's database
    assert services["migrate"]["image"] == services["app"]["image"]
    assert services["migrate"]["volumes"] == services["app"]["volumes"] == ["data:/data"]


def test_optional_parts_sit_behind_profiles_and_long_running_services_have_health_checks(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert "profiles" not in services["app"] and "profiles" not in services["migrate"]
    assert services["postgres"]["profiles"] == ["postgres"]
    assert services["ray-head"]["profiles"] == services["gpu-worker"]["profiles"] == ["ray"]
    for name in ("app", "postgres", "ray-head", "gpu-worker"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["gpu-worker"]["depends_on"]["ray-head"] == {"condition": "service_healthy"}


def test_the_gpu_worker_reserves_gpus_and_joins_the_ray_head_with_its_token(compose: dict[str, Any]) -> None:
    worker = compose["services"]["gpu-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "--address=ray-head:6379" in worker["command"]
    head = compose["services"]["ray-head"]
    assert head["environment"]["RAY_AUTH_MODE"] == worker["environment"]["RAY_AUTH_MODE"] == "token"
    app_env = compose["services"]["app"]["environment"]
    assert app_env["TUNEBOARD_RAY_ADDRESS"] == "http://ray-head:8265"
    assert "--dashboard-port=8265" in head["command"]
    # the app's token and the cluster's come from the same variable
    assert app_env["TUNEBOARD_RAY_AUTH_TOKEN"] == head["environment"]["RAY_AUTH_TOKEN"]


def test_the_dockerfile_installs_the_training_ray_and_postgres_extras_editable() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    install = re.search(r"^RUN pip install .*$", dockerfile, re.MULTILINE)
    assert install is not None
    assert "-c constraints.txt" in install.group(0)
    assert "-e '.[train,ray,postgres]'" in install.group(
        0
    )  # editable: templates/ and static/ stay beside app/
    for copied in ("app", "worker", "tuneboard", "migrations", "templates", "static"):
        assert re.search(rf"^COPY {copied} ", dockerfile, re.MULTILINE), copied
