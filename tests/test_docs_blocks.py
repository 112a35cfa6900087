"""The docs convention's parser (tests/docs_blocks.py): what runs, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from .docs_blocks import DocsError, blocks_of, has_top_level_await


def page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_python_fences_run_and_others_are_ignored(tmp_path: Path) -> None:
    text = "# T\n\n```python\nx = 1\n```\n\n```sh\nls\n```\n\n  ```python\n  y = 2\n  ```\n"
    blocks = blocks_of(page(tmp_path, text), tmp_path)
    assert [(b.id, b.code, b.not_run) for b in blocks] == [
        ("page.md:3", "x = 1\n", None),
        ("page.md:11", "y = 2\n", None),
    ]


def test_not_run_keeps_its_reason(tmp_path: Path) -> None:
    text = "<!-- not-run: needs a GPU and PyTorch with CUDA -->\n```python\nimport torch\n```\n"
    (block,) = blocks_of(page(tmp_path, text), tmp_path)
    assert block.not_run == "needs a GPU and PyTorch with CUDA"


def test_continues_runs_the_earlier_blocks_first(tmp_path: Path) -> None:
    text = "```python\nx = 1\n```\n<!-- continues -->\n```python\ny = x\n```\n"
    first, second = blocks_of(page(tmp_path, text), tmp_path)
    assert second.before == (first,)
    assert second.script == "x = 1\ny = x\n"


def test_an_include_is_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "ex.py").write_text("print('hi')\n")
    (block,) = blocks_of(page(tmp_path, '```python\n--8<-- "ex.py"\n```\n'), tmp_path)
    assert (block.code, block.includes) == ("print('hi')\n", ("ex.py",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<!-- not-run: -->\n```python\nx\n```\n",
            "page.md:1: '<!-- not-run: -->' is not a marker",
        ),
        ("<!-- not-run needs a GPU -->\n```python\nx\n```\n", "page.md:1:"),
        ("<!-- notrun: needs a GPU -->\n```python\nx\n```\n", "page.md:1:"),
        ("<!-- not-run: needs a GPU -->\n\n```python\nx\n```\n", "page.md:1:"),
        ("<!-- not-run: needs a GPU -->\n```sh\nx\n```\n", "page.md:1:"),
        ("<!-- continues -->\n```python\nx\n```\n", "no Python block before it"),
        (
            "<!-- not-run: needs a GPU -->\n```python\nx\n```\n<!-- continues -->\n```python\ny\n```\n",
            "which is not run",
        ),
        ("```python\nx = 1\n", "page.md:1: this fence is never closed"),
        (
            '```python\n--8<-- "missing.py"\n```\n',
            "page.md:2: includes 'missing.py', which is no file",
        ),
        ('```python\n--8<-- "ex.py:1:3"\n```\n', "page.md:2:"),
        ("```python\nx = 1  # --8<-- ex.py\n```\n", "an include must be"),
    ],
)
def test_a_broken_convention_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DocsError) as caught:
        blocks_of(page(tmp_path, text), tmp_path)
    assert message in str(caught.value)


def test_markers_shown_inside_a_fence_are_text(tmp_path: Path) -> None:
    text = "```markdown\n<!-- not-run: needs a GPU -->\n```\n"
    assert blocks_of(page(tmp_path, text), tmp_path) == []


def test_top_level_await_is_told_from_a_script() -> None:
    assert has_top_level_await("import anyio\nawait anyio.sleep(0)\n", "x")
    assert not has_top_level_await("async def f():\n    await g()\n", "x")
