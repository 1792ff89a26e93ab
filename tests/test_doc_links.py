"""Links in README.md, docs/ and mkdocs.yml lead to files that exist (relative), never to invented sites."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# External sites a page may cite: the paper. Anything else must be a relative link to a file here.
ALLOWED_SITES = ("https://arxiv.org/abs/2501.03895",)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_are_relative_and_lead_to_files(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            assert target in ALLOWED_SITES, f"{page.name} links to {target}"
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_mkdocs_names_no_remote_repository_and_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert "repo_url" not in config
    pages = [next(iter(entry.values())) for entry in config["nav"]]
    assert "sharing.md" in pages
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
    index = (ROOT / "docs" / "index.md").read_text()
    assert all(f"({page})" in index for page in pages if page != "index.md")
