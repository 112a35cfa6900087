"""The provider protocol: where the pool learns what the GPUs look like."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._core.model import GPUStats

__all__ = ["GPUProvider"]


@runtime_checkable
class GPUProvider(Protocol):
    """Anything that can describe the machine's GPUs.

    ``snapshot`` is synchronous and may block (NVML calls take milliseconds,
    sometimes much more on a sick driver), so the pool always calls it from a
    worker thread, never on the event loop, and never from two threads at once.
    It raises :class:`gpupool.ProviderError` when it cannot answer; the pool
    then keeps using the last good snapshot.

    A provider that never blocks may say so with a ``snapshot_blocks``
    attribute that is false; the pool then calls it on the event loop.
    """

    def snapshot(self) -> Sequence[GPUStats]:
        """The current state of every GPU this process may use, in index order."""
        ...
