"""The Python blocks of the documentation, as ``tests/test_docs_examples.py`` runs them.

The convention (written for authors in docs/architecture.md, "Writing docs"):

* every ```` ```python ```` fence in README.md and docs/**/*.md is run;
* unless the line right before it is ``<!-- not-run: REASON -->``, REASON
  saying what the block needs (``needs a GPU and PyTorch with CUDA``);
* ``<!-- continues -->`` right before a fence joins it to the previous Python
  block of the same page: it runs after that block (and whatever that one
  continues), in the same script, so it may use the names defined there;
* a line ``--8<-- "PATH"`` inside a fence stands for the whole file PATH, relative
  to the repository root (pymdownx.snippets, as the site includes it).

A marker that is malformed, or that is not right before a Python fence, is an
error, as is a fence that never closes or an include of a file that does not
exist: :func:`blocks_of` raises :class:`DocsError` naming the file and line.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import attrs

__all__ = ["Block", "DocsError", "blocks_of", "has_top_level_await", "included_files"]

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})\s*(?P<info>[^`]*)$")
_NOT_RUN = re.compile(r"^<!-- not-run: (?P<reason>\S.*?) -->$")
_CONTINUES = "<!-- continues -->"
#: Anything that looks like an attempt at one of the two markers.
_MARKER_LIKE = re.compile(r"^<!--.*\b(not[-_ ]?run|continues?)\b", re.IGNORECASE)
_SNIPPET = re.compile(r"""^\s*--8<--\s+(?P<quote>["'])(?P<path>[^"']+)(?P=quote)\s*$""")
_SNIPPET_LIKE = re.compile(r"--8<--")


class DocsError(ValueError):
    """The docs break the convention: the message names the file and the line."""


@attrs.frozen
class Block:
    """One Python fence of a page."""

    #: The page, relative to the repository root.
    page: str
    #: The line of the opening fence (1-based).
    line: int
    #: The code as shown, indentation of the fence removed, includes resolved.
    code: str
    #: Why it is not run; ``None`` when it is.
    not_run: str | None = None
    #: The blocks it continues, earliest first (their code runs before this one's).
    before: tuple[Block, ...] = ()
    #: The files it includes (``--8<--``), relative to the repository root.
    includes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def script(self) -> str:
        """What runs: the blocks it continues, then its own code."""
        return "".join(part.code for part in (*self.before, self))


def blocks_of(page: Path, root: Path) -> list[Block]:
    """Every Python block of ``page``, in order; :class:`DocsError` on a broken convention."""
    name = page.relative_to(root).as_posix()
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    marked: set[int] = set()  # 0-based indices of marker lines used by a fence
    fenced: set[int] = set()  # 0-based indices of lines inside any fence
    fence_at = 0
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        if opening is None:
            number += 1
            continue
        end = _closing(lines, number, opening)
        if end is None:
            raise DocsError(f"{name}:{number + 1}: this fence is never closed")
        fence_at = number
        number = end + 1
        fenced.update(range(fence_at, end + 1))
        if opening["info"].split()[:1] != ["python"]:
            continue
        body = [_dedent(line, opening["indent"]) for line in lines[fence_at + 1 : end]]
        previous = lines[fence_at - 1].strip() if fence_at else ""
        not_run = _not_run(previous)
        continues = previous == _CONTINUES
        if not_run is not None or continues:
            marked.add(fence_at - 1)
        code, includes = _resolve(body, name, fence_at + 1, root)
        before: tuple[Block, ...] = ()
        if continues:
            if not blocks:
                raise DocsError(
                    f"{name}:{fence_at}: <!-- continues --> but there is no Python block "
                    "before it on this page"
                )
            earlier = blocks[-1]
            if earlier.not_run is not None:
                raise DocsError(
                    f"{name}:{fence_at}: <!-- continues --> joins this block to "
                    f"{earlier.id}, which is not run: mark this one not-run too, saying why"
                )
            before = (*earlier.before, earlier)
        blocks.append(Block(name, fence_at + 1, code, not_run, before, includes))
    for index, line in enumerate(lines):
        if _MARKER_LIKE.match(line.strip()) and index not in marked | fenced:
            raise DocsError(
                f"{name}:{index + 1}: {line.strip()!r} is not a marker the docs tests "
                "understand: write `<!-- not-run: WHAT IT NEEDS -->` or `<!-- continues -->` "
                "alone on the line right before a ```python fence"
            )
    return blocks


def _closing(lines: list[str], start: int, opening: re.Match[str]) -> int | None:
    ticks = opening["ticks"]
    for number in range(start + 1, len(lines)):
        stripped = lines[number].strip()
        if stripped.startswith(ticks) and set(stripped) == {"`"}:
            return number
    return None


def _dedent(line: str, indent: str) -> str:
    return line[len(indent) :] if line.startswith(indent) else line.lstrip()


def _not_run(previous: str) -> str | None:
    match = _NOT_RUN.match(previous)
    return None if match is None else match["reason"]


def _resolve(body: list[str], page: str, line: int, root: Path) -> tuple[str, tuple[str, ...]]:
    code: list[str] = []
    includes: list[str] = []
    for offset, text in enumerate(body, start=1):
        snippet = _SNIPPET.match(text)
        if snippet is None:
            if _SNIPPET_LIKE.search(text):
                raise DocsError(
                    f"{page}:{line + offset}: {text.strip()!r}: an include must be "
                    '--8<-- "PATH" alone on its line, PATH a whole file from the repository root'
                )
            code.append(text + "\n")
            continue
        path = root / snippet["path"]
        if not path.is_file():
            raise DocsError(
                f"{page}:{line + offset}: includes {snippet['path']!r}, which is no file"
            )
        includes.append(snippet["path"])
        code.append(path.read_text(encoding="utf-8"))
    return "".join(code), tuple(includes)


def has_top_level_await(code: str, filename: str) -> bool:
    """Whether ``code`` awaits outside any function (runnable as in ``python -m asyncio``)."""
    compiled = compile(code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return bool(compiled.co_flags & inspect.CO_COROUTINE)


def included_files(blocks: list[Block]) -> set[str]:
    return {path for block in blocks for path in block.includes}
