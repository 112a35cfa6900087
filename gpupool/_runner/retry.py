"""Which failures a task retries, and how long it waits first: pure functions.

Sleeping is done by the runner; nothing here reads a clock or draws random
numbers (the caller passes ``jitter`` in), so the policy is table-testable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

from .._core.checks import check_int
from .._core.errors import PoolClosed, UnsatisfiableRequest

__all__ = ["RetryOn", "backoff_delay", "check_retry_on", "should_retry"]

#: An exception type, a tuple of them, or a predicate on the exception.
RetryOn: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)

#: Longest wait between two attempts, whatever the attempt number.
MAX_BACKOFF_S = 60.0


def check_retry_on(retry_on: object) -> RetryOn:
    """``retry_on`` itself, or a ``TypeError`` naming what is allowed."""
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        return retry_on
    if isinstance(retry_on, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    ):
        return retry_on
    if callable(retry_on) and not isinstance(retry_on, type):
        return retry_on
    raise TypeError(
        "retry_on must be an exception type, a tuple of exception types or a predicate "
        f"taking the exception, got {retry_on!r}"
    )


def should_retry(retry_on: RetryOn, error: BaseException) -> bool:
    """Whether a failed attempt that raised ``error`` deserves another try.

    An :class:`~gpupool.UnsatisfiableRequest` never does (asking again for
    GPUs the machine does not have cannot succeed), nor does
    :class:`~gpupool.PoolClosed` (nothing more will be granted).
    """
    if isinstance(error, (UnsatisfiableRequest, PoolClosed)):
        return False
    if isinstance(retry_on, (type, tuple)):
        return isinstance(error, retry_on)
    return bool(retry_on(error))


def backoff_delay(
    retry: int, *, initial: float, jitter: float = 0.0, maximum: float = MAX_BACKOFF_S
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    Exponential: ``initial * 2 ** (retry - 1)``, capped at ``maximum``, then
    shortened by up to half by ``jitter`` (a number in ``[0, 1]`` the caller
    draws), so tasks that failed together do not all come back together.

    >>> backoff_delay(1, initial=1.0), backoff_delay(3, initial=1.0)
    (1.0, 4.0)
    >>> backoff_delay(3, initial=1.0, jitter=1.0)
    2.0
    """
    check_int("retry", retry, 1)
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
    exponent = min(retry - 1, 64)  # 2**64 * anything positive is past any cap
    delay = min(maximum, initial * math.pow(2.0, exponent))
    return delay * (1.0 - 0.5 * jitter)
