"""Marks shared by the test modules."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

#: Run an anyio test on trio alone, in virtual time: sleeps end at once, in order.
trio_mockclock = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mockclock")],
)
