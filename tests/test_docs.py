"""The docs hold when code moves: every relative link resolves, and the layout names every module.

1. Every `](target)` link in README.md and docs/*.md that is not a URL points to an existing file or folder
   (relative to the page), and a `#anchor` (alone or after a .md file) to a heading of that page, with
   GitHub's heading ids (lower case, punctuation dropped, spaces to hyphens).
2. docs/architecture.md names every .py file under kit/ and deploy/ (its path in backticks), and no page
   names a file under kit/, deploy/, benchmarks/ or tests/ that does not exist, so the layout and the prose
   are brought up to date when code moves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.edge

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base, n = slug(match.group(1)), 0
            while (candidate := base if n == 0 else f"{base}-{n}") in found:
                n += 1
            found.add(candidate)
    return found


def check_links(pages: list[Path]) -> list[str]:
    problems = []
    for page in pages:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                problems.append(f"{where}: {path} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def check_layout(pages: list[Path]) -> list[str]:
    layout = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:kit|deploy)/[\w/]+\.py)`", layout))
    modules = {p.relative_to(ROOT).as_posix() for d in ("kit", "deploy") for p in (ROOT / d).rglob("*.py")}
    problems = [f"docs/architecture.md: {m} is not in the layout" for m in sorted(modules - named)]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for path in sorted(set(re.findall(r"`((?:kit|deploy|benchmarks|tests)/[\w./-]*\w)`", text))):
            if not (ROOT / path).exists():
                problems.append(f"{page.relative_to(ROOT)}: `{path}` does not exist")
    return problems


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_link_resolves():
    assert len(_pages()) >= 8
    assert check_links(_pages()) == []


def test_the_layout_names_every_module_and_no_page_names_a_missing_file():
    assert check_layout(_pages()) == []


def test_the_readme_is_a_front_door():
    """Under 200 lines; the rest is in docs/ by reader."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 200
