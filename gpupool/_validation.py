"""Argument checks shared by the runner's public functions.

Each raises with a message that names the argument, what is allowed and what
was given ("max_parallel must be an int >= 1, got 0").
"""

from __future__ import annotations

import math

__all__ = ["check_int", "check_timeout"]


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "an int" if minimum is None else f"an int >= {minimum}"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds > 0 or None, got {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0 or None, got {timeout!r}")
    return float(timeout)
