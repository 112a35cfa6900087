"""Virtual time for a test: trio's ``MockClock`` through anyio's pytest plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

__all__ = ["virtual_clock"]


def virtual_clock() -> pytest.MarkDecorator:
    """Run an ``@pytest.mark.anyio`` test on trio, in virtual time.

    Trio's ``MockClock(autojump_threshold=0)`` jumps to the next deadline
    whenever every task is blocked, so a test of an hour of GPU work (a
    pool's timeouts, refreshes, a runner's retries) takes milliseconds, and
    its sleeps end in deadline order. The decorator parametrises the test's
    ``anyio_backend`` with it (it replaces the backends of a parametrised
    ``anyio_backend`` fixture for that test). Needs trio (``pip install trio``).

    >>> @virtual_clock()  # doctest: +SKIP
    ... @pytest.mark.anyio
    ... async def test_an_hour_of_waiting(gpu_pool): ...
    """
    import pytest
    from trio.testing import MockClock

    backend = ("trio", {"clock": MockClock(autojump_threshold=0)})
    return pytest.mark.parametrize(
        "anyio_backend", [pytest.param(backend, id="trio-virtual-clock")]
    )
