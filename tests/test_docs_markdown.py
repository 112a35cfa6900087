"""docs/*.md read the same on GitHub and on the docs site.

GitHub renders CommonMark; the site (mkdocs.yml) renders with Python-Markdown,
which is stricter about lists in two ways that `mkdocs build --strict` does
not report, since both produce valid, only wrong, HTML:

* a block inside a list item after a blank line (a second paragraph, a table,
  a fenced example) and a nested list must be indented by 4 spaces: with 2,
  Python-Markdown ends the list there (CommonMark accepts both);
* a new item right after such an indented block needs a blank line before it,
  or Python-Markdown reads its ``*`` as text of the block above.

docs/architecture.md, "Writing the docs", states the rule for writers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Every Markdown file the site renders: docs/ and the changelog it includes.
PAGES = sorted([*DOCS.rglob("*.md"), ROOT / "CHANGELOG.md"])
ITEM = re.compile(r"^(?:[*-]|\d+\.) ")
SHALLOW_NESTED_ITEM = re.compile(r"^ {1,3}(?:[*-]|\d+\.) ")
SHALLOW_BLOCK = re.compile(r"^ {1,3}\S")


def list_problems(text: str) -> list[str]:
    """Where ``text`` breaks the two rules, as ``line N: what``."""
    problems = []
    lines = text.split("\n")
    in_fence = in_item = False
    item_has_blocks = False
    for number, line in enumerate(lines, start=1):
        previous = lines[number - 2] if number > 1 else ""
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence and not line.lstrip().startswith("```"):
            continue
        if ITEM.match(line):
            if item_has_blocks and previous.startswith("    "):
                problems.append(f"line {number}: a blank line must come before this item")
            in_item, item_has_blocks = True, False
        elif line and not line.startswith(" "):
            in_item = False
        elif in_item and line.strip():
            if SHALLOW_NESTED_ITEM.match(line):
                problems.append(f"line {number}: a nested list is indented by 4 spaces")
            elif previous == "":
                if SHALLOW_BLOCK.match(line):
                    problems.append(
                        f"line {number}: a block inside a list item is indented by 4 spaces"
                    )
                item_has_blocks = True
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lists_render_on_the_site_as_on_github(page: Path) -> None:
    assert list_problems(page.read_text()) == []


def test_the_check_finds_each_mistake() -> None:
    two_space_block = "* item\n\n  second paragraph\n"
    two_space_nested = "* item\n  1. nested\n"
    no_blank_line = "* item\n\n    second paragraph\n* next item\n"
    assert list_problems(two_space_block) == [
        "line 3: a block inside a list item is indented by 4 spaces"
    ]
    assert list_problems(two_space_nested) == ["line 2: a nested list is indented by 4 spaces"]
    assert list_problems(no_blank_line) == ["line 4: a blank line must come before this item"]
    fixed = "* item\n\n    second paragraph\n\n* next item\n    1. nested\n"
    assert list_problems(fixed) == []
