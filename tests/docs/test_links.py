"""README.md's relative links lead to files of the repository, and no page of
the docs site links to a path outside it (mkdocs --strict checks the links
between the site's pages and their anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.snippets import ROOT, pages

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [
        t
        for t in LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")
    ]


def test_readme_links_resolve_to_repository_files() -> None:
    links = _relative_links(ROOT / "README.md")
    assert links, "the README links into docs/"
    for link in links:
        target = (ROOT / link.split("#", 1)[0]).resolve()
        assert target.is_relative_to(ROOT), f"README.md links outside the repository: {link}"
        assert target.exists(), f"README.md links to {link}, which does not exist"


@pytest.mark.parametrize("page", pages()[1:], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_links_stay_in_the_repository(page: Path) -> None:
    for link in _relative_links(page):
        target = (page.parent / link.split("#", 1)[0]).resolve()
        assert target.is_relative_to(ROOT / "docs"), f"{page}: {link} leaves the docs site"
