"""Waiting in tests for what other processes do: poll with a deadline that names what was
awaited, and whether a process has gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from gpupool._system.procfs import read_stat

__all__ = ["gone", "wait_for"]

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 30) -> T:
    """Poll ``condition`` until it returns something true; return that.

    ``AssertionError`` ("timed out waiting for WHAT") after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """No process ``pid`` runs (none, or a zombie: ended, whoever is yet to reap it)."""
    info = read_stat(pid)
    return info is None or not info.alive
