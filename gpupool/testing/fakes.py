"""What a test asks of its fake GPUs, as one value: :class:`FakeGPUs`.

The pytest plugin's ``fake_gpus`` fixture reads it from the test's
``@pytest.mark.fake_gpus(...)`` marker or from an indirect parametrisation
(``@pytest.mark.parametrize("fake_gpus", [2, {"count": 4}], indirect=True)``),
and builds the :class:`~gpupool.testing.FakeGPUProvider` it describes.
Every field is checked when the value is made, so a typo in a marker fails
the test that has it with a message naming the field, not a later snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, final

import attrs

from .._core.checks import check_finite_seconds, check_int, check_number, check_str, is_int, shown
from ..providers.fake import DEFAULT_MEMORY_MB, MAX_FAKE_GPUS, FakeGPUProvider

__all__ = ["FakeGPUs"]


def _per_gpu(name: str, value: object, count: int, check: Any) -> tuple[Any, ...]:
    """``value`` for every GPU: one value for all of them, or a sequence of ``count``."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != count:
            raise ValueError(
                f"{name} must be one value or a sequence of {count} (one per GPU), "
                f"got {shown(value)}"
            )
        return tuple(check(f"{name}[{i}]", v) for i, v in enumerate(value))
    return (check(name, value),) * count


def _memory(name: str, value: object) -> int:
    return check_int(name, value, 1)


def _used(name: str, value: object) -> int:
    return check_int(name, value, 0)


def _utilization(name: str, value: object) -> float | None:
    return None if value is None else check_number(name, value, minimum=0, maximum=100)


def _unhealthy(value: object) -> dict[int, str]:
    """``unhealthy=[1]`` or ``unhealthy={1: "XID 79"}``: lost GPUs and why."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, (str, bytes)):
        items = [(index, "GPU is lost") for index in value]
    else:
        raise TypeError(
            f"unhealthy must be GPU indices or a mapping of index to reason, got {shown(value)}"
        )
    return {
        check_int("unhealthy index", index, 0): check_str("unhealthy reason", reason)
        for index, reason in items
    }


@final
@attrs.frozen
class FakeGPUs:
    """Fake GPUs for one test: how many, their memory, usage and faults.

    ``memory_mb``, ``memory_used_mb`` (memory used by something outside the
    pool) and ``utilization_pct`` are one value for every GPU or a sequence
    with one per GPU. ``unhealthy`` names GPUs that are lost (indices, or a
    mapping of index to NVML's reason); ``snapshot_latency_s`` makes every
    snapshot that slow (a sick driver). Made from a marker's or a
    parameter's arguments by :meth:`of`.

    >>> FakeGPUs.of({"count": 2, "memory_used_mb": [0, 20_000]}).provider().snapshot()[1].memory_free_mb
    4576
    """

    count: int = 4
    memory_mb: tuple[int, ...] = ()
    memory_used_mb: tuple[int, ...] = ()
    utilization_pct: tuple[float | None, ...] = ()
    unhealthy: Mapping[int, str] = attrs.field(factory=dict, hash=False)
    snapshot_latency_s: float = 0.0
    name: str = "Fake GPU"

    @classmethod
    def of(cls, value: object = None, /, **options: Any) -> FakeGPUs:
        """The fake GPUs ``value`` describes, with ``options`` on top.

        ``value`` is a :class:`FakeGPUs`, a GPU count, a mapping of the
        keyword arguments below, or ``None``; ``options`` are ``count``,
        ``memory_mb``, ``memory_used_mb``, ``utilization_pct``,
        ``unhealthy``, ``snapshot_latency_s`` and ``name``. ``TypeError`` or
        ``ValueError`` names the argument that is wrong.
        """
        given: dict[str, Any] = {}
        if isinstance(value, FakeGPUs):
            given = {
                "count": value.count,
                "memory_mb": _uniform(value.memory_mb),
                "memory_used_mb": _uniform(value.memory_used_mb),
                "utilization_pct": _uniform(value.utilization_pct),
                "unhealthy": dict(value.unhealthy),
                "snapshot_latency_s": value.snapshot_latency_s,
                "name": value.name,
            }
        elif is_int(value):
            given = {"count": value}
        elif isinstance(value, Mapping):
            given = dict(value)
        elif value is not None:
            raise TypeError(
                "fake GPUs must be given as a GPU count, a mapping of FakeGPUs' arguments "
                f"or a FakeGPUs, got {shown(value)}"
            )
        given.update(options)
        unknown = sorted(set(given) - set(_FIELDS))
        if unknown:
            raise TypeError(
                f"unknown fake GPU option(s) {', '.join(unknown)}: the options are "
                f"{', '.join(_FIELDS)}"
            )
        count = check_int("count", given.get("count", 4), 0, MAX_FAKE_GPUS)
        unhealthy = _unhealthy(given.get("unhealthy", ()))
        for index in unhealthy:
            check_int("unhealthy index", index, 0, count - 1)
        return cls(
            count=count,
            memory_mb=_per_gpu(
                "memory_mb", _unset(given.get("memory_mb"), DEFAULT_MEMORY_MB), count, _memory
            ),
            memory_used_mb=_per_gpu(
                "memory_used_mb", _unset(given.get("memory_used_mb"), 0), count, _used
            ),
            utilization_pct=_per_gpu(
                "utilization_pct",
                given.get("utilization_pct", 0.0),
                count,
                _utilization,
            ),
            unhealthy=unhealthy,
            snapshot_latency_s=check_finite_seconds(
                "snapshot_latency_s", given.get("snapshot_latency_s", 0.0)
            ),
            name=check_str("name", given.get("name", "Fake GPU")),
        )

    def provider(self) -> FakeGPUProvider:
        """A new :class:`~gpupool.testing.FakeGPUProvider` in this state."""
        memory = list(self.memory_mb) if self.memory_mb else DEFAULT_MEMORY_MB
        fake = FakeGPUProvider(self.count, memory, name=self.name)
        for index in range(self.count):
            if self.memory_used_mb:
                fake.set_memory_used(index, self.memory_used_mb[index])
            if self.utilization_pct:
                fake.set_utilization(index, self.utilization_pct[index])
        for index, reason in self.unhealthy.items():
            fake.set_healthy(index, False, reason)
        if self.snapshot_latency_s:
            fake.set_latency(self.snapshot_latency_s)
        return fake


_FIELDS = (
    "count",
    "memory_mb",
    "memory_used_mb",
    "utilization_pct",
    "unhealthy",
    "snapshot_latency_s",
    "name",
)


def _uniform(values: tuple[Any, ...]) -> object:
    """A per-GPU field copied from another value: one value where all GPUs agree, so
    that a copy with another ``count`` keeps it."""
    if len(set(values)) == 1:
        return values[0]
    return values or None


def _unset(value: object, default: object) -> object:
    """A field's value as given, or its default where it was not (or is empty, from a copy)."""
    return default if value is None or value == () else value
