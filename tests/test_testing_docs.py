"""docs/testing.md's pytest files, docs/examples/testing/, run as the page says: alone
(the leased test skips on a machine without GPUs) and under pytest-xdist over fake GPUs.
And the page includes them whole (pymdownx.snippets), so it shows what runs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples" / "testing"
PAGE = REPO / "docs" / "testing.md"
FILES = ("conftest.py", "test_sweep.py")


@pytest.fixture
def examples(pytester: pytest.Pytester) -> pytest.Pytester:
    for name in FILES:
        shutil.copy(EXAMPLES / name, pytester.path / name)
    return pytester


@pytest.fixture
def ledger() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="gpupool-docs-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("name", FILES)
def test_the_page_shows_each_example_file_whole(name: str) -> None:
    include = f'--8<-- "docs/examples/testing/{name}"'
    assert f"```python\n{include}\n```" in PAGE.read_text()


def test_the_example_suite_passes_under_xdist_over_fake_gpus(
    examples: pytest.Pytester, ledger: str
) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist is in the dev extra")
    result = examples.runpytest_subprocess(
        "-n", "2", "-p", "no:randomly", "--gpus-fake", "2", "--gpus-ledger", ledger
    )
    result.assert_outcomes(passed=6)


def test_the_example_suite_passes_in_one_process_over_fake_gpus(
    examples: pytest.Pytester, ledger: str
) -> None:
    examples.runpytest_subprocess("--gpus-fake", "1", "--gpus-ledger", ledger).assert_outcomes(
        passed=6
    )
