"""How a task's reservation grows after it ran out of GPU memory: pure functions.

The rule (docs/memory.md, "Out-of-memory retries"), for a shared request of
``m`` MB on each of ``k`` GPUs:

* the **cap** ``C`` is the largest reservation that some ``k`` GPUs could
  still hold: the ``k``-th largest total memory among the healthy GPUs the
  request may use (its ``allowed_gpus``);
* the next reservation is ``max(2 * m, m + ceil(C / 4))``: at least double,
  and at least a quarter of the GPU more, so that a small first guess does
  not take many failed attempts to grow;
* a reservation that would reach the cap becomes an **exclusive** request
  instead (with ``min_memory_mb`` left at ``m``, the memory that was granted
  before): a shared reservation of the whole GPU would also wait for every
  byte other processes use, and an exclusive GPU is what "all of it" means;
* an exclusive request cannot grow: it is returned unchanged (and retried as
  it is), and so is a CPU-only one.

So every shared request reaches the exclusive fixed point in at most four
growths. Nothing here reads a clock or a GPU; the runner passes the totals
in (``gpupool._runner.runner``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

import attrs

from .checks import check_bool, check_int
from .request import Resources

__all__ = ["LearnedMemory", "apply_learned", "grow_after_oom", "memory_cap_mb"]


def _memory_mb(value: int) -> int:
    return check_int("min_memory_mb", value, 0)


def _exclusive(value: bool) -> bool:
    return check_bool("exclusive", value)


@final
@attrs.frozen
class LearnedMemory:
    """What out-of-memory retries taught about a task: the reservation its next
    start asks for, per GPU, and whether it needs its GPUs whole.

    A journal keeps one per task key (docs/journal.md), so that a resumed
    sweep starts the task with it instead of failing again at the first size.
    """

    min_memory_mb: int = attrs.field(converter=_memory_mb)
    exclusive: bool = attrs.field(converter=_exclusive)

    @classmethod
    def of(cls, request: Resources) -> LearnedMemory:
        """The memory part of ``request``."""
        return cls(request.min_memory_mb, request.exclusive)

    def describe(self) -> str:
        """``12288 MB shared`` or ``an exclusive GPU (at least 8000 MB free)``."""
        if self.exclusive:
            return f"exclusive GPUs (at least {self.min_memory_mb} MB free)"
        return f"{self.min_memory_mb} MB shared"


def memory_cap_mb(request: Resources, totals_mb: Mapping[int, int]) -> int | None:
    """The largest per-GPU reservation ``request`` could be granted, or None if none.

    ``totals_mb`` maps the index of each healthy GPU to its total memory.
    """
    allowed = request.allowed_gpus
    candidates = sorted(
        (total for index, total in totals_mb.items() if allowed is None or index in allowed),
        reverse=True,
    )
    if request.required_gpus < 1 or len(candidates) < request.required_gpus:
        return None
    return candidates[request.required_gpus - 1]


def grow_after_oom(request: Resources, totals_mb: Mapping[int, int]) -> Resources:
    """The request of the attempt after one that ran out of GPU memory (see the module docstring)."""
    if request.exclusive or not request.required_gpus:
        return request
    cap = memory_cap_mb(request, totals_mb)
    memory = request.min_memory_mb
    if cap is None:
        return attrs.evolve(request, exclusive=True)
    grown = max(2 * memory, memory + -(-cap // 4))
    if grown >= cap:
        return attrs.evolve(request, exclusive=True)
    return attrs.evolve(request, min_memory_mb=grown)


def apply_learned(
    request: Resources, learned: LearnedMemory, totals_mb: Mapping[int, int]
) -> Resources:
    """``request`` as a task starts it, given the request a journal learned for it.

    The learned size never shrinks what the task asks for now: a task whose
    request was raised by hand since keeps the larger one, and a learned
    exclusive GPU stays exclusive. A learned size no GPU could hold any more
    (the GPUs changed) becomes an exclusive request. CPU-only tasks ignore it.
    """
    if not request.required_gpus:
        return request
    if learned.exclusive and not request.exclusive:
        memory = max(request.min_memory_mb, learned.min_memory_mb)
        cap = memory_cap_mb(request, totals_mb)
        if cap is not None:
            memory = min(memory, cap)
        return attrs.evolve(request, exclusive=True, min_memory_mb=memory)
    if request.exclusive or learned.min_memory_mb <= request.min_memory_mb:
        return request
    cap = memory_cap_mb(request, totals_mb)
    if cap is not None and learned.min_memory_mb >= cap:
        return attrs.evolve(request, exclusive=True)
    return attrs.evolve(request, min_memory_mb=learned.min_memory_mb)
