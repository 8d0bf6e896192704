"""Every relative link and image in README.md and docs/*.md points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_in_the_readme_and_docs_resolve() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    checked = 0
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # web addresses and in-page anchors
            checked += 1
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(REPO)} → {target}")
    assert checked >= 10, f"only {checked} relative links found: is the pattern still right?"
    assert not broken, "links to missing files:\n" + "\n".join(broken)
