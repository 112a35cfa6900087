"""The one request value: what a piece of work needs of the GPUs.

:class:`Resources` is validated once, when it is made, and then taken as it
is by every entry point: ``pool.acquire`` / ``acquire_nowait`` /
``allocation``, ``runner.submit`` / ``map`` / ``optimize``; the jobs file of
``gpupool run`` builds one per line. The keyword forms
(``pool.acquire(required_gpus=2, min_memory_mb=8000)``) are spellings of it:
:class:`ResourceOptions` lists the keywords once for every entry point, and
:func:`request_of` turns either form into the value, so that the same bad
input gets the same exception and message wherever it is given.

Defaults, the one deliberate difference
---------------------------------------
A pool is for GPUs: ``pool.acquire()`` asks for one (:data:`POOL_DEFAULT_GPUS`,
also ``Resources()``'s default). A runner task asks for none unless it says
so (:data:`RUNNER_DEFAULT_GPUS`): a sweep mixes GPU training with CPU work
(data preparation, reports), and a CPU task must not queue for a GPU it
never uses. ``required_gpus=0`` is therefore a valid value (a CPU-only task)
that the pool refuses: it grants GPUs (docs/runner.md, "GPUs only when asked
for").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, final

import attrs

from .checks import check_bool, check_int, check_number, check_seconds, check_str, shown
from .errors import UnsatisfiableRequest

__all__ = [
    "POOL_DEFAULT_GPUS",
    "RESOURCE_KEYWORDS",
    "RUNNER_DEFAULT_GPUS",
    "ResourceOptions",
    "Resources",
    "check_experiment_id",
    "make_request",
    "planned_duration",
    "request_of",
    "with_estimate",
]

#: GPUs a pool request asks for when it does not say (see the module docstring).
POOL_DEFAULT_GPUS = 1
#: GPUs a runner task asks for when it does not say: none (see the module docstring).
RUNNER_DEFAULT_GPUS = 0


# The converters check and normalise one field each. Their parameters carry
# the type a caller should pass (so mypy checks calls of Resources(...)); the
# checks are for callers whose types were not checked.


def _gpus(value: int) -> int:
    return check_int("required_gpus", value, minimum=0)


def _memory(value: float) -> int:
    return math.ceil(check_number("min_memory_mb", value, minimum=0))


def _exclusive(value: bool) -> bool:
    return check_bool("exclusive", value)


def _priority(value: int) -> int:
    return check_int("priority", value)


def _allowed(value: Iterable[int] | None) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"allowed_gpus must be None or a collection of GPU indices, got {shown(value)}"
        )
    return frozenset(check_int("allowed_gpus entry", g, minimum=0) for g in value)


def check_experiment_id(value: object) -> str | None:
    """An allocation's label (``pool.acquire(experiment_id=...)``): a str or ``None``."""
    return None if value is None else check_str("experiment_id", value, allowed="a str or None")


def _duration(value: float | None) -> float | None:
    return check_seconds("expected_duration", value, allow_zero=False, allow_inf=False)


def _estimated(value: float | None) -> float | None:
    return check_seconds("estimated_duration", value, allow_zero=False, allow_inf=False)


def planned_duration(request: Resources, *, estimates: bool = True) -> float | None:
    """The seconds a scheduler plans ``request`` to hold its GPUs: the user's
    ``expected_duration``, else (with ``estimates``) the ``estimated_duration``."""
    hint = request.expected_duration
    if hint is None and estimates:
        return request.estimated_duration
    return hint


@final
@attrs.frozen
class Resources:
    """What a piece of work needs of the GPUs; validated when it is made.

    ``required_gpus`` whole GPUs (``0``: none, a CPU-only runner task), each
    with at least ``min_memory_mb`` free (a number, rounded up to whole MB);
    ``exclusive=False`` shares GPUs with other shared holders while their
    memory fits, so it needs ``min_memory_mb > 0``. Higher ``priority`` is
    served first. ``allowed_gpus``: the GPU indices it may get (``None``:
    any). ``expected_duration``: seconds the holder expects to keep
    the GPUs, a hint that lets the default :class:`~gpupool.BackfillPolicy`
    start shorter work early without delaying the queue's head.
    ``estimated_duration``: the same, but estimated by the system rather
    than promised by the user (``ParallelRunner`` fills it from history for
    tasks that give no ``expected_duration``, which always wins). The policy
    trusts an estimate less than a hint: see ``docs/scheduling.md``,
    "Durations learned from history".

    A wrong type is a ``TypeError``, a wrong value a ``ValueError``, and an
    ``allowed_gpus`` that no request could be granted from an
    :class:`~gpupool.UnsatisfiableRequest`; each message names the field.
    """

    required_gpus: int = attrs.field(default=POOL_DEFAULT_GPUS, converter=_gpus)
    #: Per GPU, in MB (MiB).
    min_memory_mb: int = attrs.field(default=0, converter=_memory)
    exclusive: bool = attrs.field(default=True, converter=_exclusive)
    priority: int = attrs.field(default=0, converter=_priority)
    allowed_gpus: frozenset[int] | None = attrs.field(default=None, converter=_allowed)
    #: Seconds; a scheduling hint.
    expected_duration: float | None = attrs.field(default=None, converter=_duration)
    #: Seconds; a scheduling hint estimated from history (not a keyword of acquire or map).
    estimated_duration: float | None = attrs.field(default=None, converter=_estimated, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.required_gpus and not self.exclusive and self.min_memory_mb == 0:
            raise ValueError(
                "exclusive=False needs min_memory_mb > 0: shared GPUs are divided by memory, "
                "so a shared request must say how much it needs"
            )
        allowed = self.allowed_gpus
        if allowed is not None:
            if not allowed:
                raise UnsatisfiableRequest("allowed_gpus is empty: no GPU could ever be granted")
            if len(allowed) < self.required_gpus:
                raise UnsatisfiableRequest(
                    f"required_gpus={self.required_gpus} but allowed_gpus names only "
                    f"{len(allowed)} GPU(s): {sorted(allowed)}"
                )


_FIELDS = tuple(field.name for field in attrs.fields(Resources))


def with_estimate(request: Resources, seconds: float | None) -> Resources:
    """``request`` with ``estimated_duration=seconds`` (checked as the field is).

    Only the estimate is checked: the other fields come from a valid request.
    The runner makes one per GPU task with an estimate, and ``attrs.evolve``,
    which converts every field again, was three quarters of what learning
    durations cost a trivial task (profiled: 15 of 20 us under cProfile).
    """
    estimate = _estimated(seconds)
    copy = object.__new__(Resources)
    for name in _FIELDS:
        object.__setattr__(copy, name, getattr(request, name))
    object.__setattr__(copy, "estimated_duration", estimate)
    return copy


class ResourceOptions(TypedDict, total=False):
    """The keyword spelling of :class:`Resources`, as the runner takes it."""

    required_gpus: int
    min_memory_mb: float
    exclusive: bool
    priority: int
    allowed_gpus: Iterable[int] | None
    expected_duration: float | None


#: The keywords each kind of entry point takes. ``experiment_id`` labels an allocation,
#: not the request: the pool takes it beside a Resources too, and the runner sets it to
#: each task's key.
RESOURCE_KEYWORDS = frozenset(ResourceOptions.__optional_keys__)


# Validated requests for the plainest argument shapes (ints, bools, nothing else), so a
# hot loop of identical acquires validates once. Keyed with the types, since 1 == True.
_plain_requests: dict[tuple[object, ...], Resources] = {}
_PLAIN_CACHE_LIMIT = 1024
# And ``acquire(n)`` with nothing else, the commonest call of all, by ``n`` alone: a
# lookup here instead of make_request's checks took request_of from 0.44 to 0.13 us.
_whole_gpus: dict[int, Resources] = {n: Resources(n) for n in range(9)}


def make_request(
    required_gpus: object = POOL_DEFAULT_GPUS,
    *,
    min_memory_mb: object = 0,
    exclusive: object = True,
    priority: object = 0,
    allowed_gpus: object = None,
    expected_duration: object = None,
    gpus_at_least: int = 1,
) -> Resources:
    """The :class:`Resources` that the keywords spell, or raise saying what was wrong.

    ``gpus_at_least`` is the entry point's floor for ``required_gpus``: 1 for
    the pool, which grants GPUs, 0 for the runner (a CPU-only task).
    """
    if (
        type(required_gpus) is int
        and required_gpus >= gpus_at_least
        and type(min_memory_mb) is int
        and type(exclusive) is bool
        and type(priority) is int
        and allowed_gpus is None
        and expected_duration is None
    ):
        key = (required_gpus, min_memory_mb, exclusive, priority)
        request = _plain_requests.get(key)
        if request is None:
            request = Resources(required_gpus, min_memory_mb, exclusive, priority)
            if len(_plain_requests) < _PLAIN_CACHE_LIMIT:
                _plain_requests[key] = request
        return request
    check_int("required_gpus", required_gpus, minimum=gpus_at_least)
    return Resources(
        required_gpus,  # type: ignore[arg-type]  # checked by Resources
        min_memory_mb,  # type: ignore[arg-type]
        exclusive,  # type: ignore[arg-type]
        priority,  # type: ignore[arg-type]
        allowed_gpus,  # type: ignore[arg-type]
        expected_duration,  # type: ignore[arg-type]
    )


def request_of(
    resources: object,
    options: Mapping[str, Any],
    *,
    default_gpus: int = POOL_DEFAULT_GPUS,
    gpus_at_least: int = 1,
    keywords: frozenset[str] = RESOURCE_KEYWORDS,
) -> Resources:
    """The one request of a call: ``resources`` (a :class:`Resources`, or an int for
    ``required_gpus``, or ``None``) or the keywords in ``options``, not both.

    Raises ``TypeError`` for a ``resources`` of another type, for a
    :class:`Resources` together with resource keywords, and for an unknown
    keyword; the checks of :class:`Resources` for bad values.
    """
    if not options and type(resources) is int:
        # acquire(1), the commonest call, straight to the cache.
        cached = _whole_gpus.get(resources)
        if cached is not None and resources >= gpus_at_least:
            return cached
        return make_request(resources, gpus_at_least=gpus_at_least)
    if type(resources) is Resources:
        if options:
            raise TypeError(
                "pass the request as a gpupool.Resources or as keywords, not both: got "
                f"{shown(resources)} and {', '.join(f'{k}=' for k in options)}"
            )
        if resources.required_gpus < gpus_at_least:
            raise ValueError(
                f"required_gpus must be an int >= {gpus_at_least}, got "
                f"{resources.required_gpus} (a pool grants GPUs; Resources(required_gpus=0) "
                "is a CPU-only runner task)"
            )
        return resources
    if options and not options.keys() <= keywords:
        unknown = sorted(options.keys() - keywords)
        raise TypeError(
            f"unknown request keyword(s) {', '.join(unknown)}; known: {', '.join(sorted(keywords))}"
        )
    if resources is None:
        if "required_gpus" in options:
            return make_request(gpus_at_least=gpus_at_least, **options)
        return make_request(default_gpus, gpus_at_least=gpus_at_least, **options)
    if "required_gpus" in options:
        raise TypeError(
            f"required_gpus is given twice: {shown(resources)} and "
            f"required_gpus={shown(options['required_gpus'])}"
        )
    if isinstance(resources, int) and not isinstance(resources, bool):
        return make_request(resources, gpus_at_least=gpus_at_least, **options)
    raise TypeError(
        "the request must be a gpupool.Resources, an int (required_gpus) or None, "
        f"got {shown(resources)}"
    )
