"""What an ``acquire`` asks for, validated once at the call.

Validation lives here, in one place, so that ``acquire``, ``acquire_nowait``
and ``allocation`` reject exactly the same bad input with exactly the same
messages, before anything is queued. Arguments are typed ``object`` on
purpose: the checks are for callers whose types were not checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from ._errors import UnsatisfiableRequest

__all__ = ["Request", "check_int", "check_seconds", "make_request"]


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


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int (never a bool), at least ``minimum``; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_seconds(name: str, value: object, *, allow_zero: bool = True) -> float | None:
    """``None``, or a number of seconds (``inf`` also means no limit, returned as ``None``)."""
    if value is None:
        return None
    seconds = _check_number(name, value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be None or a number of seconds {bound}, got {value!r}")
    return None if math.isinf(seconds) else seconds


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
    memory_float = _check_number("min_memory_mb", min_memory_mb)
    if not 0 <= memory_float < math.inf:
        raise ValueError(f"min_memory_mb must be a finite number >= 0, got {min_memory_mb!r}")
    memory = math.ceil(memory_float)
    if not isinstance(exclusive, bool):
        raise ValueError(f"exclusive must be True or False, got {exclusive!r}")
    if not exclusive and memory == 0:
        raise ValueError(
            "exclusive=False needs min_memory_mb > 0: shared GPUs are divided by memory, "
            "so a shared request must say how much it needs"
        )
    level = check_int("priority", priority)
    allowed = None if allowed_gpus is None else _check_allowed(allowed_gpus, gpus)
    if experiment_id is not None and not isinstance(experiment_id, str):
        raise ValueError(f"experiment_id must be a str or None, got {experiment_id!r}")
    duration = check_seconds("expected_duration", expected_duration, allow_zero=False)
    if expected_duration is not None and duration is None:
        raise ValueError(f"expected_duration must be finite, got {expected_duration!r}")
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
        raise ValueError(
            f"allowed_gpus must be None or a collection of GPU indices, got {allowed_gpus!r}"
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
