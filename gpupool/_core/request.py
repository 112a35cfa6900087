"""What an ``acquire`` asks for, validated once at the call.

Validation lives here, in one place, so that ``acquire``, ``acquire_nowait``
and ``allocation`` reject exactly the same bad input with exactly the same
messages, before anything is queued; and so that an argument with the same
name (``timeout``, ``min_memory_mb``, ...) has the same rules wherever it is
taken (:mod:`.checks` holds those shared rules).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from .checks import check_int, check_number, check_seconds, shown
from .errors import UnsatisfiableRequest

__all__ = ["Request", "make_request"]


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
