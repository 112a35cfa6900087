"""Waiting for a Ray ``ObjectRef`` from either anyio backend.

``await ref`` is asyncio only (under trio it fails), and waiting in a thread
(``ray.get``) cannot be cancelled without leaving the thread behind. Ray
resolves ``ref.future()`` (a ``concurrent.futures.Future``) from a thread of
its own; a done-callback wakes the waiting task through its loop's own
thread-safe call (asyncio's ``call_soon_threadsafe``, trio's token), so a
wait costs no thread and is cancelled at once. Measured here: about 1.1 ms
per call either way, the Ray round trip (docs/ray.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["resolved", "waker"]


def waker() -> Callable[[Callable[[], object]], object]:
    """A function that runs a callback on the current event loop, from any thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return loop.call_soon_threadsafe


async def resolved(ref: Any, *, abandoned: Callable[[Any], object] | None = None) -> Any:
    """The value of ``ref`` (raises what the remote call raised).

    Cancelled before the value came, the wait ends at once; ``abandoned`` is
    then called with the value if it still comes (a grant nobody will use,
    to be handed back), from Ray's thread.
    """
    future: concurrent.futures.Future[Any] = ref.future()
    done = anyio.Event()
    wake = waker()

    def on_done(_: concurrent.futures.Future[Any]) -> None:
        # The loop may have ended (asyncio: closed; trio.RunFinishedError): nobody waits.
        with contextlib.suppress(RuntimeError):
            wake(done.set)

    future.add_done_callback(on_done)
    try:
        await done.wait()
    except BaseException:
        if abandoned is not None:
            future.add_done_callback(lambda f: _hand_back(f, abandoned))
        raise
    return future.result()


def _hand_back(future: concurrent.futures.Future[Any], abandoned: Callable[[Any], object]) -> None:
    if not future.cancelled() and future.exception() is None:
        abandoned(future.result())
