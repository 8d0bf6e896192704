"""Front-end libraries are vendored and pinned: every file VERSIONS.md lists has its recorded checksum, and no
page the app serves loads a script or stylesheet from another origin."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastapi.testclient import TestClient

VENDOR = Path(__file__).resolve().parents[2] / "static" / "vendor"
CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$", re.MULTILINE)
FOREIGN_ASSET = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']?(?:https?:)?//""", re.IGNORECASE)


def test_every_vendored_file_has_its_recorded_checksum() -> None:
    listed = CHECKSUM_LINE.findall((VENDOR / "VERSIONS.md").read_text())
    assert len(listed) >= 7
    for digest, name in listed:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_the_api_page_loads_nothing_from_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
    assert not FOREIGN_ASSET.search(page.text), page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/static/vendor/swagger-ui/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404  # CDN-only, so not offered


def test_no_page_loads_a_script_or_stylesheet_from_another_origin(client: TestClient) -> None:
    for path in ("/", "/jobs/new", "/datasets", "/docs"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert not FOREIGN_ASSET.search(page.text), path
