"""The shared Jinja environment: number formats matching the scripts', the vocabulary the pages carry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs.status import CANCELLABLE, PROGRESSING, RESUMABLE, TERMINAL, JobStatus
from app.templating import fmt_number
from contract.metrics import METRICS, PANELS

REPO = Path(__file__).resolve().parents[2]
STATIC_JS = REPO / "static" / "js"

# (value, digits) → the text both sides show; the rules are written down in app/templating.py
NUMBER_CASES: list[tuple[Any, int, str]] = [
    (None, 4, "—"),
    ("nan", 4, "NaN"),
    ("inf", 4, "∞"),
    ("-inf", 4, "−∞"),
    (float("nan"), 4, "NaN"),
    (float("-inf"), 4, "−∞"),
    (0, 4, "0"),
    (0.0, 4, "0"),
    (7, 4, "7"),
    (12345, 4, "12,345"),
    (1234.0, 4, "1,234"),
    (-1234, 4, "-1,234"),
    (2_500_000, 4, "2,500,000"),
    (0.5, 4, "0.5"),
    (0.123456, 4, "0.1235"),
    (1.23456, 3, "1.23"),
    (1234.5678, 6, "1,234.57"),
    (-0.25, 4, "-0.25"),
    (123456.7, 4, "123,500"),
    (0.001, 4, "0.001"),
    (0.0001, 4, "1.000e-4"),
    (2e-5, 3, "2.00e-5"),
    (2500000.5, 4, "2.500e6"),
    (1e20, 4, "1.000e20"),
]


def test_the_server_formats_numbers_by_the_documented_rules() -> None:
    for value, digits, expected in NUMBER_CASES:
        assert fmt_number(value, digits) == expected, (value, digits)


def _format_in_node(cases: list[tuple[Any, int]]) -> list[str]:
    """fmtNum of static/js/format.js for each case, run by node with a stand-in window and document."""
    script = (
        "const window = {}; const document = { getElementById: () => null };\n"
        + (STATIC_JS / "format.js").read_text(encoding="utf-8")
        + "\nconst cases = JSON.parse(process.argv[1]);\n"
        # NaN and infinities do not survive JSON: they travel as the names the server uses for them
        + "const real = { NaN: NaN, Infinity: Infinity, MinusInfinity: -Infinity };\n"
        + "const out = cases.map(([v, d]) => window.TuneboardFormat.fmtNum(v in real ? real[v] : v, d));\n"
        + "console.log(JSON.stringify(out));\n"
    )
    result = subprocess.run(
        ["node", "-e", script, json.dumps(cases)], capture_output=True, text=True, timeout=30, check=True
    )
    return list(json.loads(result.stdout))


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run static/js/format.js")
def test_the_scripts_format_every_number_exactly_as_the_server_does() -> None:
    def for_json(value: Any) -> Any:
        if isinstance(value, float) and value != value:
            return "NaN"
        if value == float("inf"):
            return "Infinity"
        if value == float("-inf"):
            return "MinusInfinity"
        return value

    shown_by_js = _format_in_node([(for_json(v), d) for v, d, _ in NUMBER_CASES])
    for (value, digits, expected), shown in zip(NUMBER_CASES, shown_by_js, strict=True):
        assert shown == expected == fmt_number(value, digits), (value, digits)


def test_no_script_keeps_its_own_list_of_statuses_or_metric_keys() -> None:
    statuses = {s.value for s in JobStatus}
    metric_keys = {m.key for m in METRICS}
    for path in sorted(STATIC_JS.glob("*.js")):
        quoted = set(re.findall(r"[\"']([a-z_]+)[\"']", path.read_text(encoding="utf-8")))
        assert not quoted & statuses, f"{path.name} names statuses {sorted(quoted & statuses)}"
        # the compare page's x axis "step" is not a metric; every metric name comes from the vocabulary
        assert not quoted & metric_keys, f"{path.name} names metric keys {sorted(quoted & metric_keys)}"


def _vocabulary(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="tuneboard-vocabulary">(.*?)</script>', html, re.S)
    assert found is not None, "the page carries no vocabulary for its scripts"
    return dict(json.loads(found.group(1)))


def test_every_page_hands_the_scripts_the_status_sets_and_metric_panels(client: TestClient) -> None:
    vocabulary = _vocabulary(client.get("/").text)
    statuses = vocabulary["statuses"]
    assert statuses["all"] == [s.value for s in JobStatus]
    assert set(statuses["terminal"]) == TERMINAL
    assert set(statuses["cancellable"]) == CANCELLABLE
    assert set(statuses["resumable"]) == RESUMABLE
    assert set(statuses["progressing"]) == PROGRESSING
    assert statuses["badge_class"]["running"] == "badge badge-running"
    assert [p["id"] for p in vocabulary["panels"]] == [p.id for p in PANELS]
    memory = [m["key"] for m in vocabulary["metrics"] if m["panel"] == "memory"]
    assert memory == ["vram_allocated_gb", "vram_reserved_gb", "vram_peak_gb", "rss_gb", "gpu_util"]
