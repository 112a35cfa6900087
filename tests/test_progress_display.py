"""ProgressDisplay refuses bad arguments when it is made (issue 10 item 5).

Regression: ``ProgressDisplay(42)`` was accepted and failed only on enter, with
``AttributeError: 'int' object has no attribute 'subscribe'``.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from gpupool import ParallelRunner, ProgressDisplay


@pytest.mark.parametrize("runner", [42, None, "runner", ParallelRunner])
def test_the_runner_must_be_a_parallel_runner(runner: object) -> None:
    with pytest.raises(TypeError, match=r"runner must be a gpupool\.ParallelRunner, got "):
        ProgressDisplay(runner)  # type: ignore[arg-type]


def test_the_console_must_be_a_rich_console() -> None:
    with pytest.raises(
        TypeError, match=r"console must be a rich\.console\.Console or None, got 42"
    ):
        ProgressDisplay(ParallelRunner(), console=42)  # type: ignore[arg-type]


def test_the_description_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="description must be a str, got 42"):
        ProgressDisplay(ParallelRunner(), description=42)  # type: ignore[arg-type]


def test_a_negative_total_is_refused() -> None:
    with pytest.raises(ValueError, match="total must be an int >= 0"):
        ProgressDisplay(ParallelRunner(), total=-1)


def test_good_arguments_are_accepted() -> None:
    console = Console(file=io.StringIO())
    display = ProgressDisplay(ParallelRunner(), total=3, console=console, description="sweep")
    assert display.counts == {}
