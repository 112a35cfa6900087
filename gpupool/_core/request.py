"""What an ``acquire`` asks for, validated once at the call; and the argument checks
that the rest of the package shares.

Validation lives here, in one place, so that ``acquire``, ``acquire_nowait``
and ``allocation`` reject exactly the same bad input with exactly the same
messages, before anything is queued; and so that an argument with the same
name (``timeout``, ``min_memory_mb``, ...) has the same rules wherever it is
taken. The rule is attrs': a wrong type is a ``TypeError``, a wrong value a
``ValueError``, and the message names the argument, what was given and what
is allowed. Arguments are typed ``object`` on purpose: the checks are for
callers whose types were not checked.
"""

from __future__ import annotations

import decimal
import inspect
import math
import sys
from collections.abc import Iterable

import attrs

from .errors import UnsatisfiableRequest

__all__ = [
    "Request",
    "check_finite_seconds",
    "check_int",
    "check_number",
    "check_seconds",
    "is_async_callable",
    "make_request",
    "shown",
]


@attrs.frozen
class Request:
    """A validated request for GPUs. ``min_memory_mb`` is per GPU."""

    required_gpus: int = 1
    min_memory_mb: int = 0
    exclusive: bool = True
    priority: int = 0
    allowed_gpus: frozenset[int] | None = None
    experiment_id: str | None = None
    #: How long the holder expects to keep the GPUs (seconds); a scheduling hint.
    expected_duration: float | None = None


#: An error message shows at most this much of a value's repr.
_SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)`` for an error message, kept short.

    An int too large for a float is shown in scientific notation (its repr may
    run to thousands of digits, or be refused by Python's digit limit), and
    any other repr is cut at 80 characters.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        return f"{format(decimal.Decimal(value), '.3e')} (an int too large for a float)"
    text = repr(value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return text


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int (never a bool) within the bounds given.

    ``TypeError`` for anything but an int, ``ValueError`` for an int out of
    bounds; either message names the argument, the value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{_bounds(minimum, maximum)}, got {shown(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{_bounds(minimum, maximum)}, got {shown(value)}")
    return value


def _as_float(name: str, value: object, allowed: str) -> float:
    """``value`` (an int or a float, never a bool) as a float; else say it must be ``allowed``.

    ``float()`` of an int beyond the float range raises a bare ``OverflowError``;
    here it is a ``ValueError`` naming the argument like any other bad value.
    """
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}") from None


def check_number(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite float within the bounds given (ints are welcome).

    ``TypeError`` for a non-number (bools included), ``ValueError`` for NaN,
    an infinity, an int too large for a float, or a value out of bounds.
    """
    allowed = f"a finite number{_bounds(minimum, maximum)}"
    number = _as_float(name, value, allowed)
    if (
        not math.isfinite(number)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    ):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return number


def check_seconds(
    name: str, value: object, *, allow_zero: bool = True, allow_inf: bool = True
) -> float | None:
    """An optional limit in seconds: ``None`` for no limit, else a float.

    ``None`` means no limit; so does ``math.inf`` (returned as ``None``)
    unless ``allow_inf`` is false. Zero is allowed unless ``allow_zero`` is
    false: for a timeout it means a deadline of now (docs/pool.md, "Arguments
    and errors"). ``TypeError`` for a non-number, ``ValueError`` for NaN, a
    negative number or an int too large for a float.
    """
    if value is None:
        return None
    bound = ">= 0" if allow_zero else "> 0"
    allowed = f"None or {'a' if allow_inf else 'a finite'} number of seconds {bound}"
    seconds = _as_float(name, value, allowed)
    if (
        math.isnan(seconds)
        or seconds < 0
        or (seconds == 0 and not allow_zero)
        or (math.isinf(seconds) and not allow_inf)
    ):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return None if math.isinf(seconds) else seconds


def check_finite_seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """A duration that must be given: a finite number of seconds (``> 0`` without ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    allowed = f"a finite number of seconds {bound}"
    seconds = _as_float(name, value, allowed)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return seconds


def is_async_callable(fn: object) -> bool:
    """True for an ``async def`` function, a partial of one, or an object with an async
    ``__call__``: calling it gives a coroutine, not a result."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


# Validated requests for the plainest argument shapes (ints, bools, nothing else), so a
# hot loop of identical acquires validates once. Keyed with the types, since 1 == True.
# An experiment id (the runner passes each task's key) does not change what is valid,
# so a request that differs only by one is built from the cached one.
_plain_requests: dict[tuple[object, ...], Request] = {}
_PLAIN_CACHE_LIMIT = 1024


def make_request(
    required_gpus: object = 1,
    *,
    min_memory_mb: object = 0,
    exclusive: object = True,
    priority: object = 0,
    allowed_gpus: object = None,
    experiment_id: object = None,
    expected_duration: object = None,
) -> Request:
    """Check every argument and build a :class:`Request`, or raise saying what was wrong."""
    plain = (
        type(required_gpus) is int
        and type(min_memory_mb) is int
        and type(exclusive) is bool
        and type(priority) is int
        and allowed_gpus is None
        and expected_duration is None
    )
    if plain and (experiment_id is None or isinstance(experiment_id, str)):
        key = (required_gpus, min_memory_mb, exclusive, priority)
        request = _plain_requests.get(key)
        if request is None:
            request = _validated_request(
                required_gpus,
                min_memory_mb=min_memory_mb,
                exclusive=exclusive,
                priority=priority,
                allowed_gpus=None,
                experiment_id=None,
                expected_duration=None,
            )
            if len(_plain_requests) < _PLAIN_CACHE_LIMIT:
                _plain_requests[key] = request
        if experiment_id is None:
            return request
        return Request(
            request.required_gpus,
            request.min_memory_mb,
            request.exclusive,
            request.priority,
            None,
            experiment_id,
        )
    return _validated_request(
        required_gpus,
        min_memory_mb=min_memory_mb,
        exclusive=exclusive,
        priority=priority,
        allowed_gpus=allowed_gpus,
        experiment_id=experiment_id,
        expected_duration=expected_duration,
    )


def _validated_request(
    required_gpus: object,
    *,
    min_memory_mb: object,
    exclusive: object,
    priority: object,
    allowed_gpus: object,
    experiment_id: object,
    expected_duration: object,
) -> Request:
    gpus = check_int("required_gpus", required_gpus, minimum=1)
    memory = math.ceil(check_number("min_memory_mb", min_memory_mb, minimum=0))
    if not isinstance(exclusive, bool):
        raise TypeError(f"exclusive must be True or False, got {shown(exclusive)}")
    if not exclusive and memory == 0:
        raise ValueError(
            "exclusive=False needs min_memory_mb > 0: shared GPUs are divided by memory, "
            "so a shared request must say how much it needs"
        )
    level = check_int("priority", priority)
    allowed = None if allowed_gpus is None else _check_allowed(allowed_gpus, gpus)
    if experiment_id is not None and not isinstance(experiment_id, str):
        raise TypeError(f"experiment_id must be a str or None, got {shown(experiment_id)}")
    duration = check_seconds(
        "expected_duration", expected_duration, allow_zero=False, allow_inf=False
    )
    return Request(
        required_gpus=gpus,
        min_memory_mb=memory,
        exclusive=exclusive,
        priority=level,
        allowed_gpus=allowed,
        experiment_id=experiment_id,
        expected_duration=duration,
    )


def _check_allowed(allowed_gpus: object, required_gpus: int) -> frozenset[int]:
    if isinstance(allowed_gpus, (str, bytes)) or not isinstance(allowed_gpus, Iterable):
        raise TypeError(
            f"allowed_gpus must be None or a collection of GPU indices, got {shown(allowed_gpus)}"
        )
    allowed = frozenset(check_int("allowed_gpus entry", g, minimum=0) for g in allowed_gpus)
    if not allowed:
        raise UnsatisfiableRequest("allowed_gpus is empty: no GPU could ever be granted")
    if len(allowed) < required_gpus:
        raise UnsatisfiableRequest(
            f"required_gpus={required_gpus} but allowed_gpus names only "
            f"{len(allowed)} GPU(s): {sorted(allowed)}"
        )
    return allowed
