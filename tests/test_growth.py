"""The out-of-memory growth rule (gpupool/_core/growth.py): tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool import Resources
from gpupool._core.growth import LearnedMemory, apply_learned, grow_after_oom, memory_cap_mb

GIB = 1024
FOUR_24G = dict.fromkeys(range(4), 24 * GIB)


def _shared(gpus: int, mb: int, **kwargs: object) -> Resources:
    return Resources(gpus, min_memory_mb=mb, exclusive=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "steps"),
    [
        # max(2m, m + C/4) with C = 24G: a quarter of the GPU at least, then exclusive.
        (2 * GIB, [8 * GIB, 16 * GIB, None]),
        (10 * GIB, [20 * GIB, None]),
        (1, [1 + 6 * GIB, 2 + 12 * GIB, None]),
        (24 * GIB, [None]),  # at the cap already
    ],
)
def test_a_shared_request_grows_by_the_rule_then_becomes_exclusive(
    start: int, steps: list[int | None]
) -> None:
    request = _shared(1, start, priority=3)
    for expected in steps:
        grown = grow_after_oom(request, FOUR_24G)
        if expected is None:
            assert grown.exclusive
            assert grown.min_memory_mb == request.min_memory_mb  # what was granted before
        else:
            assert (grown.min_memory_mb, grown.exclusive) == (expected, False)
        assert (grown.required_gpus, grown.priority) == (1, 3)  # nothing else changes
        request = grown
    assert grow_after_oom(request, FOUR_24G) == request


def test_the_cap_is_what_enough_gpus_could_hold() -> None:
    totals = {0: 16 * GIB, 1: 80 * GIB, 2: 40 * GIB}
    assert memory_cap_mb(_shared(1, 100), totals) == 80 * GIB
    assert memory_cap_mb(_shared(2, 100), totals) == 40 * GIB  # two GPUs of 40G at most
    assert memory_cap_mb(_shared(3, 100), totals) == 16 * GIB
    assert memory_cap_mb(_shared(1, 100, allowed_gpus={0, 2}), totals) == 40 * GIB
    assert memory_cap_mb(_shared(1, 100, allowed_gpus={0}), {1: 80 * GIB}) is None
    # Growth on the 2-GPU request is capped by the smaller of the two biggest GPUs.
    assert grow_after_oom(_shared(2, 8 * GIB), totals) == _shared(2, 18 * GIB)
    assert grow_after_oom(_shared(2, 20 * GIB), totals).exclusive


def test_exclusive_and_cpu_requests_do_not_grow() -> None:
    exclusive = Resources(1, min_memory_mb=1000)
    assert grow_after_oom(exclusive, FOUR_24G) is exclusive
    cpu = Resources(0)
    assert grow_after_oom(cpu, FOUR_24G) is cpu
    # No GPU left that could hold it (all lost): nothing to grow into but a whole GPU.
    assert grow_after_oom(_shared(1, 1000), {}).exclusive


@given(
    gpus=st.integers(1, 4),
    totals=st.lists(st.integers(1, 200_000), min_size=4, max_size=4),
    fraction=st.floats(0.0, 1.0),
)
def test_growth_is_monotone_capped_and_ends_exclusive_within_four_steps(
    gpus: int, totals: list[int], fraction: float
) -> None:
    by_index = dict(enumerate(totals))
    cap = sorted(totals, reverse=True)[gpus - 1]
    request = _shared(gpus, max(1, int(cap * fraction)))
    for _ in range(4):
        if request.exclusive:
            break
        grown = grow_after_oom(request, by_index)
        assert grown.min_memory_mb >= request.min_memory_mb  # monotone
        assert grown.exclusive or request.min_memory_mb < grown.min_memory_mb < cap  # capped
        assert grown.required_gpus == gpus
        request = grown
    assert request.exclusive  # terminates
    assert grow_after_oom(request, by_index) == request  # and stays


def test_a_learned_size_starts_the_task_but_never_shrinks_it() -> None:
    learned = LearnedMemory(16 * GIB, exclusive=False)
    assert apply_learned(_shared(1, 2 * GIB), learned, FOUR_24G) == _shared(1, 16 * GIB)
    assert apply_learned(_shared(1, 20 * GIB), learned, FOUR_24G) == _shared(1, 20 * GIB)
    exclusive = Resources(1, min_memory_mb=1000)
    assert apply_learned(exclusive, learned, FOUR_24G) is exclusive
    whole = apply_learned(_shared(1, 2 * GIB), LearnedMemory(8 * GIB, True), FOUR_24G)
    assert (whole.exclusive, whole.min_memory_mb) == (True, 8 * GIB)
    # The GPUs shrank since: a learned size none could hold becomes a whole GPU.
    smaller = {0: 12 * GIB}
    assert apply_learned(_shared(1, 2 * GIB), learned, smaller) == Resources(
        1, min_memory_mb=2 * GIB
    )
    assert apply_learned(Resources(0), learned, FOUR_24G) == Resources(0)


def test_learned_memory_checks_its_fields() -> None:
    with pytest.raises(TypeError, match="min_memory_mb must be an int"):
        LearnedMemory("8G", False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_memory_mb must be an int >= 0"):
        LearnedMemory(-1, False)
    with pytest.raises(TypeError, match="exclusive must be True or False"):
        LearnedMemory(1, 1)  # type: ignore[arg-type]
    assert LearnedMemory.of(_shared(1, 300)) == LearnedMemory(300, False)
    assert LearnedMemory(300, False).describe() == "300 MB shared"
