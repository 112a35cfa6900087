"""A griffe extension: gpupool's reST-flavoured docstrings, rendered as Markdown.

gpupool's docstrings are prose, with ``double-backtick`` literals (a Markdown
code span too) and Sphinx cross-reference roles such as
``:class:`~gpupool.Resources``` or ``:meth:`Slots.acquire```, which Markdown
would print as they are. This extension, loaded by mkdocstrings (mkdocs.yml),
rewrites each role as a code span that links to the object's entry in the API
reference when the reference has one: the role's target is resolved in the
scope of the docstring's object, as Sphinx would, and becomes an *optional*
autorefs reference, so a role that names a private object (the reference
renders only public ones) stays plain code instead of a broken link. It also
turns reST's ``text::`` (a literal block follows) into ``text:``, since the
indented block after it is a Markdown code block already, fences
doctests (``>>>`` paragraphs) as ``pycon`` code, and links the guide pages
a docstring names (``docs/runner.md``) to the page on the site.

Only the rendered docs see the change: the source and ``help()`` keep the
docstrings as written.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import griffe

#: A Sphinx role: ``:class:`target```, ``:meth:`~module.Class.method```.
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):`(?P<target>[^`]+)`")
#: A guide page named in a docstring, ``docs/runner.md`` or docs/runner.md.
_GUIDE_PAGE = re.compile(r"``docs/(?P<code>[\w-]+)\.md``|(?<![\w/])docs/(?P<text>[\w-]+)\.md")
#: The guide's pages: the Markdown files beside docs/_ext/.
_DOCS = Path(__file__).resolve().parents[1]
#: From an API reference page (docs/reference/NAME.md, served at reference/NAME/)
#: to a guide page (docs/PAGE.md, served at PAGE/).
_GUIDE_URL = "../../{page}/"
#: A doctest: a paragraph that starts with ``>>>``, up to the next blank line.
_DOCTEST = re.compile(r"(?m)^(?P<indent>[ ]*)>>> .*(?:\n(?P=indent)\S.*)*")
#: A doctest directive (``# doctest: +SKIP``): for the doctest runner, not the reader.
_DOCTEST_DIRECTIVE = re.compile(r"[ ]*# doctest:[^\n]*")
#: reST's "a literal block follows" marker at the end of a paragraph.
_LITERAL_MARKER = re.compile(r"(?P<before>\S)::(?=\n\n)|\s::(?=\n\n)")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``, or None if it is not gpupool's."""
    first, _, rest = target.partition(".")
    if first == "gpupool":
        return target
    try:
        path = obj.resolve(first)
    except griffe.NameResolutionError:
        # A member of the class the docstring belongs to (or of its class).
        scope: griffe.Object | None = obj
        while scope is not None and first not in scope.members:
            scope = scope.parent
        if scope is None:
            return None
        path = f"{scope.path}.{first}"
    return f"{path}.{rest}" if rest else path


def _rewrite(obj: griffe.Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        target = match["target"].strip()
        shown = target.lstrip("~")
        if target.startswith("~"):
            shown = shown.rsplit(".", 1)[-1]
        code = f"<code>{html.escape(shown)}</code>"
        path = _resolve(obj, target.lstrip("~"))
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    def literal(match: re.Match[str]) -> str:
        return f"{match['before']}:" if match["before"] else ""

    def doctest(match: re.Match[str]) -> str:
        indent = match["indent"]
        session = _DOCTEST_DIRECTIVE.sub("", match[0])
        return f"{indent}```pycon\n{session}\n{indent}```"

    def guide_page(match: re.Match[str]) -> str:
        page = match["code"] or match["text"]
        if not (_DOCS / f"{page}.md").is_file():
            return match[0]
        shown = f"<code>docs/{page}.md</code>" if match["code"] else f"docs/{page}.md"
        return f'<a href="{_GUIDE_URL.format(page=page)}">{shown}</a>'

    text = _DOCTEST.sub(doctest, text)
    text = _GUIDE_PAGE.sub(guide_page, text)
    return _LITERAL_MARKER.sub(literal, _ROLE.sub(role, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package once the whole package is known."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, seen=set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)  # type: ignore[arg-type]
