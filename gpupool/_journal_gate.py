"""The runner's async front to a `Journal`: one run per key, even concurrently.

`Journal.claim` refuses a key that is already in flight. A runner that is
handed the same key twice at once (two ``map`` items with one key, or two
``submit`` calls) should not fail the second one but let it wait for the
first and then share its outcome: the waiter claims again once the first
finishes and so gets the recorded result (``from_journal=True``), or runs the
task itself if the first was cancelled.

All methods are called from the event loop thread (`anyio.Event` is not
thread-safe); the journal calls they make are short and inline (see
`_journal`).
"""

from __future__ import annotations

from typing import final

import anyio

from ._journal import Journal
from ._tasks import TaskResult, TaskStatus

__all__ = ["JournalGate"]


@final
class JournalGate:
    """Deduplicating, async-aware access to a journal for one runner."""

    def __init__(self, journal: Journal, *, retry_failed: bool = False) -> None:
        self.journal = journal
        self.retry_failed = retry_failed
        self._in_flight: dict[str, anyio.Event] = {}

    async def claim(self, key: str, *, fn: str = "", item: object = None) -> TaskResult | None:
        """Like `Journal.claim`, but waits while another task of this runner
        holds ``key`` instead of failing."""
        while (event := self._in_flight.get(key)) is not None:
            await event.wait()
        result = self.journal.claim(key, fn=fn, item=item, retry_failed=self.retry_failed)
        if result is None:
            self._in_flight[key] = anyio.Event()
        return result

    def record(
        self, key: str, status: TaskStatus, *, attempt: int, gpu_indices: tuple[int, ...] = ()
    ) -> None:
        self.journal.record(key, status, attempt=attempt, gpu_indices=gpu_indices)

    def finish(self, result: TaskResult) -> TaskResult:
        """Commit the final result (see `Journal.finish`) and wake any waiter."""
        try:
            return self.journal.finish(result)
        finally:
            event = self._in_flight.pop(result.key, None)
            if event is not None:
                event.set()

    def in_flight(self, key: str) -> bool:
        return key in self._in_flight
