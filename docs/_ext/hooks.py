"""MkDocs hooks (mkdocs.yml ``hooks:``): the guide's public names link to the API reference.

The guide pages are written to read well on GitHub too, so they name the API
as plain code: `GPUResourcePool`, `gpupool.run_process`. On the site, each
such code span whose text is a name with an entry in docs/reference/ (or that
name prefixed with ``gpupool.``) becomes an autorefs link to that entry.
Code in fenced blocks, in headings and in links that are already links is
left alone, and so are the reference pages themselves. Only exact names are
linked (`ParallelRunner`, not `ParallelRunner(pool)`), so nothing is linked by
a guess.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

_REFERENCE = Path(__file__).resolve().parents[1] / "reference"
_ENTRY = re.compile(r"^:::[ \t]+([\w.]+)", re.MULTILINE)
#: A fence's opening or closing line: ``` or ~~~, possibly indented.
_FENCE = re.compile(r"^\s*(```|~~~)")
#: Links that exist already, inline ([text](url)) or by reference ([text][id]).
_LINK = re.compile(r"\[[^\]\n]*\](?:\([^)\n]*\)|\[[^\]\n]*\])")
_CODE_NAME = re.compile(r"`(?P<name>[A-Za-z_][\w.]*)`")


@cache
def _targets() -> dict[str, str]:
    """Code text -> reference identifier, from the entries of docs/reference/."""
    targets = {}
    for page in sorted(_REFERENCE.glob("*.md")):
        for identifier in _ENTRY.findall(page.read_text()):
            targets[identifier] = identifier
            owner, _, name = identifier.rpartition(".")
            # A name of gpupool itself, or an integration's class, is also
            # written without its module; other modules' names only in full.
            if owner == "gpupool" or (
                owner.startswith("gpupool.integrations.") and name[0].isupper()
            ):
                targets.setdefault(name, identifier)
                targets.setdefault(f"gpupool.{name}", identifier)
    return targets


def _link_line(line: str, targets: dict[str, str]) -> str:
    kept: list[str] = []

    def keep(match: re.Match[str]) -> str:
        kept.append(match[0])
        return f"\x00{len(kept) - 1}\x00"

    def link(match: re.Match[str]) -> str:
        identifier = targets.get(match["name"])
        return match[0] if identifier is None else f"[{match[0]}][{identifier}]"

    line = _CODE_NAME.sub(link, _LINK.sub(keep, line))
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m[1])], line)


def link_public_names(markdown: str, targets: dict[str, str]) -> str:
    """``markdown`` with its public names' code spans linked to their reference entries."""
    lines = []
    in_fence = False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and not line.startswith("#"):
            line = _link_line(line, targets)
        lines.append(line)
    return "\n".join(lines)


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri.startswith("reference/"):
        return markdown
    return link_public_names(markdown, _targets())
