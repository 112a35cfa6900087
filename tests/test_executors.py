"""The dual executors and run_blocking(): values, nesting, timeouts, abandonment.

These run real threads, so they use the real clock with timeouts far above the
work they guard (a test never asserts how fast anything was).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

import gpupool
from gpupool import CallAbandoned, run_blocking
from gpupool._runner.executors import Executors, current_executors

pytestmark = pytest.mark.anyio

GENEROUS = 30.0  # seconds; only reached if something deadlocks


async def _eventually(condition: Callable[[], bool]) -> None:
    """Wait for a worker thread to get somewhere (threads cannot set anyio Events)."""
    with anyio.fail_after(GENEROUS):
        while not condition():  # noqa: ASYNC110 - the condition is changed by a thread
            await anyio.sleep(0.005)


async def test_await_from_async_code_returns_the_value() -> None:
    assert await run_blocking(pow, 2, 10) == 1024
    assert await run_blocking(pow, 2, 10, timeout=GENEROUS) == 1024


async def test_errors_of_the_call_propagate() -> None:
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await run_blocking(boom)


async def test_from_an_anyio_worker_thread_it_blocks_and_returns() -> None:
    def in_thread() -> tuple[int, str]:
        value = run_blocking(pow, 3, 3, timeout=GENEROUS)
        return value, threading.current_thread().name

    value, _ = await anyio.to_thread.run_sync(in_thread)
    assert value == 27


async def test_errors_come_back_to_a_worker_thread_too() -> None:
    def boom() -> None:
        raise KeyError("from low level")

    def in_thread() -> str:
        try:
            run_blocking(boom)
        except KeyError as exc:
            return str(exc)
        return "no error"

    assert await anyio.to_thread.run_sync(in_thread) == "'from low level'"


async def test_nested_call_runs_inline_in_the_low_level_thread() -> None:
    def outer() -> tuple[int, int]:
        inner_thread = run_blocking(threading.get_ident)
        return threading.get_ident(), inner_thread

    outer_thread, inner_thread = await run_blocking(outer)
    assert outer_thread == inner_thread
    assert outer_thread != threading.get_ident()


def _sample(depth: int, barrier: threading.Barrier | None) -> int:
    """A plain task function making two timed blocking calls, each nested ``depth`` deep."""

    def nested(level: int) -> int:
        if barrier is not None and level == 1:
            barrier.wait(GENEROUS)  # every sample's low-level call is in flight at once
        if level == depth:
            time.sleep(0.005)
            return level
        return int(run_blocking(nested, level + 1, timeout=GENEROUS))

    return int(run_blocking(nested, 1, timeout=GENEROUS)) + int(
        run_blocking(nested, 1, timeout=GENEROUS)
    )


async def _run_samples(executors: Executors, count: int, fn: Callable[[], int]) -> list[int]:
    results: list[int] = []

    async def one() -> None:
        results.append(await executors.high.run(executors, fn, ()))

    with anyio.fail_after(GENEROUS):
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
    return results


async def test_five_samples_on_four_and_four_workers_complete_without_timeouts() -> None:
    """The issue's reproduction: 5 samples on 4/4 workers, 2 timed calls each.

    The barrier makes all four high-level threads wait inside their nested
    call at the same moment, which a single shared 4-worker pool can never
    satisfy (the deadlock this design rules out).
    """
    executors = Executors(high_level_workers=4, low_level_workers=4)
    barrier = threading.Barrier(4)
    first_round = threading.Event()

    def sample() -> int:
        if not first_round.is_set():
            try:
                return _sample(1, barrier)
            finally:
                first_round.set()
        return _sample(1, None)

    results = await _run_samples(executors, 5, sample)
    assert results == [2] * 5
    assert executors.low.statistics().abandoned_total == 0


async def test_depth_three_with_one_worker_each_completes() -> None:
    executors = Executors(high_level_workers=1, low_level_workers=1)
    results = await _run_samples(executors, 3, lambda: _sample(3, None))
    assert results == [6, 6, 6]


async def test_a_low_level_thread_that_reenters_async_code_borrows_its_slot() -> None:
    """Async code started from a low-level thread must not queue for another slot."""
    executors = Executors(high_level_workers=1, low_level_workers=1)

    async def again() -> int:
        return int(await run_blocking(lambda: 5, timeout=GENEROUS))

    def low() -> int:
        return anyio.from_thread.run(again)

    with anyio.fail_after(GENEROUS):
        assert await executors.low.run(executors, low, ()) == 5


async def test_timeout_raises_and_frees_the_slot_for_the_next_call() -> None:
    executors = Executors(high_level_workers=1, low_level_workers=1)
    release = threading.Event()
    try:
        with pytest.raises(TimeoutError, match=r"did not finish within timeout=0\.05 s"):
            await executors.low.run(executors, release.wait, (GENEROUS,), time_limit=0.05)
        stats = executors.low.statistics()
        assert (stats.busy, stats.abandoned_running, stats.abandoned_total) == (0, 1, 1)
        # The abandoned thread still runs, yet a new call gets the only slot.
        with anyio.fail_after(GENEROUS):
            assert await executors.low.run(executors, pow, (2, 3)) == 8
    finally:
        release.set()
    await _eventually(lambda: executors.low.statistics().abandoned_running == 0)
    assert executors.low.statistics().abandoned_total == 1


async def test_abandoning_a_call_cancels_its_nested_calls() -> None:
    executors = Executors(high_level_workers=1, low_level_workers=1)
    release = threading.Event()
    seen: list[BaseException] = []

    def plain_task() -> None:
        try:
            run_blocking(release.wait, GENEROUS)  # no timeout of its own
        except BaseException as exc:
            seen.append(exc)
            raise

    try:
        with pytest.raises(TimeoutError):
            await executors.high.run(executors, plain_task, (), time_limit=0.05)
        with anyio.fail_after(GENEROUS):
            # The nested low-level call was cancelled with its caller: the slot is free.
            assert await executors.low.run(executors, pow, (2, 4)) == 16
        await _eventually(lambda: bool(seen))
        assert isinstance(seen[0], CallAbandoned)
        # Code working for an abandoned call that asks for more work is refused at once.
        call = gpupool._runner.executors._Call(abandoned=True)
        token = gpupool._runner.executors._CALL.set(call)
        try:
            with pytest.raises(CallAbandoned):
                await run_blocking(pow, 1, 1)
        finally:
            gpupool._runner.executors._CALL.reset(token)
    finally:
        release.set()


async def test_outside_a_runner_each_event_loop_has_a_default_pair() -> None:
    first = current_executors()
    assert first is current_executors()
    assert first.low.workers == gpupool._runner.executors.DEFAULT_WORKERS


def test_from_a_thread_without_an_event_loop() -> None:
    assert run_blocking(pow, 2, 5) == 32
    assert run_blocking(pow, 2, 5, timeout=GENEROUS) == 32
    gate = threading.Event()
    try:
        with pytest.raises(TimeoutError):
            run_blocking(gate.wait, GENEROUS, timeout=0.05)
    finally:
        gate.set()


def test_inline_call_that_overruns_its_timeout_reports_it_on_return() -> None:
    def outer() -> Any:
        return run_blocking(time.sleep, 0.05, timeout=0.01)

    async def main() -> None:
        with pytest.raises(TimeoutError, match="ran inline"):
            await run_blocking(outer)

    anyio.run(main)


@pytest.mark.parametrize(
    ("timeout", "error", "match"),
    [
        (-1.0, ValueError, "timeout must be None or a number of seconds >= 0, got -1.0"),
        (float("nan"), ValueError, "got nan"),
        ("1", TypeError, "got '1'"),
        (True, TypeError, "got True"),
    ],
)
def test_bad_timeouts_are_refused(timeout: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        run_blocking(pow, 1, 1, timeout=timeout)  # type: ignore[arg-type]


def test_fn_must_be_callable() -> None:
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        run_blocking(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, None])
def test_worker_counts_are_validated(workers: object) -> None:
    with pytest.raises((TypeError, ValueError), match="high_level_workers must be an int >= 1"):
        Executors(high_level_workers=workers)  # type: ignore[arg-type]
