"""The README stays one screen, and every relative link in it and in docs/ resolves."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "benchmarks" / "results").glob("*.md"))]


def test_readme_is_one_screen():
    assert (REPO / "README.md").stat().st_size < 12 * 1024


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)   # code blocks hold no links
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue   # absolute URLs, and anchors within the page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_no_page_cites_a_design_document_outside_the_project():
    for path in [*PAGES, *(REPO / "components").glob("*.py"), *(REPO / "onerec").rglob("*.py")]:
        assert "DESIGN.md" not in path.read_text(), path
