"""Connecting a command-line process to a Ray cluster, bounded, from its main thread.

``gpupool status --ray`` and ``gpupool run --ray`` connect before anything
else, in the main thread: ``ray.init`` from another thread logs a warning
(it cannot install its SIGTERM handler there) that would be printed on every
command. An address where nothing listens is refused first, by
:class:`RayCluster`'s own check (Ray would retry it without end); any other
hang is cut by ``SIGALRM`` after ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import ray

from .cluster import _check_reachable

__all__ = ["connected"]


@contextlib.contextmanager
def connected(address: str, *, timeout: float = 60.0) -> Iterator[None]:
    """Connect to Ray at ``address`` (as ``ray.init`` takes it) for the ``with`` block.

    ``ConnectionError`` when nothing answers there or the connection takes
    more than ``timeout`` seconds. A process connected already stays so, and
    is left connected; one connected here is disconnected at the end.
    """
    if not isinstance(address, str) or not address:
        raise TypeError(f"address must be a non-empty str (as ray.init takes it), got {address!r}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if ray.is_initialized():
        yield
        return
    _check_reachable(address)
    try:
        with _alarm(timeout):
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except TimeoutError:
        raise ConnectionError(
            f"could not connect to Ray at {address!r} within {timeout:g} s"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConnectionError(f"could not connect to Ray at {address!r}: {error}") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """``TimeoutError`` in the main thread after ``seconds`` (nothing elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
