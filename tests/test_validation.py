"""Bad input gets a clear error at the call: never a hang, never a silent clamp.

One rule across the package (attrs'): a wrong type is a ``TypeError``, a
wrong value a ``ValueError``, and the message names the argument, the value
given and what is allowed. The same argument has the same rules everywhere;
``timeout=0`` means a deadline of now wherever a timeout is taken.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from gpupool import (
    BackfillPolicy,
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    Journal,
    ParallelRunner,
    TaskStatus,
    UnsatisfiableRequest,
    estimate_memory_mb,
    run_blocking,
    run_process,
)
from gpupool._cli.main import main as cli_main
from gpupool._core.checks import shown
from gpupool._core.decisions import Failure, Grant, Outcome
from gpupool._core.request import Resources, make_request
from gpupool._core.scheduler import Scheduler
from gpupool._core.scoring import ScoredGPU
from gpupool.providers.fake import MAX_FAKE_GPUS

from .strategies import gpu

pytestmark = pytest.mark.anyio

HUGE = 10**400  # an int no float can hold: float(HUGE) raises a bare OverflowError


@pytest.fixture
async def pool() -> AsyncIterator[GPUResourcePool]:
    async with GPUResourcePool(FakeGPUProvider(count=2, memory_mb=16_000)) as opened:
        yield opened


# ---------------------------------------------------------------- acquire

BAD_ARGUMENTS = [
    ({"required_gpus": 0}, ValueError, "required_gpus must be an int >= 1, got 0"),
    ({"required_gpus": -1}, ValueError, "required_gpus must be an int >= 1, got -1"),
    ({"required_gpus": 1.0}, TypeError, "required_gpus must be an int >= 1, got 1.0"),
    ({"required_gpus": True}, TypeError, "required_gpus must be an int >= 1, got True"),
    ({"required_gpus": "2"}, TypeError, "required_gpus must be an int >= 1, got '2'"),
    ({"min_memory_mb": -1}, ValueError, "min_memory_mb must be a finite number >= 0, got -1"),
    (
        {"min_memory_mb": math.nan},
        ValueError,
        "min_memory_mb must be a finite number >= 0, got nan",
    ),
    (
        {"min_memory_mb": math.inf},
        ValueError,
        "min_memory_mb must be a finite number >= 0, got inf",
    ),
    ({"min_memory_mb": "8G"}, TypeError, "min_memory_mb must be a finite number >= 0, got '8G'"),
    (
        {"min_memory_mb": HUGE},
        ValueError,
        "min_memory_mb must be a finite number >= 0, got 1.000e+400 (an int too large for a float)",
    ),
    ({"timeout": -1}, ValueError, "timeout must be None or a number of seconds >= 0, got -1"),
    (
        {"timeout": math.nan},
        ValueError,
        "timeout must be None or a number of seconds >= 0, got nan",
    ),
    ({"timeout": "1"}, TypeError, "timeout must be None or a number of seconds >= 0, got '1'"),
    ({"timeout": True}, TypeError, "timeout must be None or a number of seconds >= 0, got True"),
    (
        {"timeout": HUGE},
        ValueError,
        "timeout must be None or a number of seconds >= 0, got 1.000e+400 (an int too large",
    ),
    ({"priority": 1.5}, TypeError, "priority must be an int, got 1.5"),
    ({"exclusive": "no"}, TypeError, "exclusive must be True or False, got 'no'"),
    ({"exclusive": False}, ValueError, "exclusive=False needs min_memory_mb > 0"),
    ({"allowed_gpus": "01"}, TypeError, "allowed_gpus must be None or a collection"),
    ({"allowed_gpus": 3}, TypeError, "allowed_gpus must be None or a collection"),
    ({"allowed_gpus": [0, "1"]}, TypeError, "allowed_gpus entry must be an int >= 0, got '1'"),
    ({"allowed_gpus": [-1]}, ValueError, "allowed_gpus entry must be an int >= 0, got -1"),
    ({"allowed_gpus": []}, UnsatisfiableRequest, "allowed_gpus is empty"),
    ({"allowed_gpus": [5]}, UnsatisfiableRequest, "allowed_gpus names GPU(s) [5]"),
    ({"required_gpus": 2, "allowed_gpus": [0]}, UnsatisfiableRequest, "names only 1 GPU(s)"),
    ({"required_gpus": 3}, UnsatisfiableRequest, "required_gpus=3 but the pool has 2 GPU(s)"),
    ({"min_memory_mb": 16_001}, UnsatisfiableRequest, "the largest has 16000 MB"),
    ({"experiment_id": 7}, TypeError, "experiment_id must be a str or None, got 7"),
    (
        {"expected_duration": 0},
        ValueError,
        "expected_duration must be None or a finite number of seconds > 0, got 0",
    ),
    (
        {"expected_duration": math.inf},
        ValueError,
        "expected_duration must be None or a finite number of seconds > 0, got inf",
    ),
    (
        {"expected_duration": HUGE},
        ValueError,
        "expected_duration must be None or a finite number of seconds > 0, got 1.000e+400",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
async def test_acquire_rejects_bad_input_at_once(
    pool: GPUResourcePool, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    before = pool.statistics()
    with pytest.raises(error, match=re.escape(message)):
        await pool.acquire(**kwargs)  # type: ignore[arg-type]
    assert pool.statistics() == before


@pytest.mark.parametrize(
    ("kwargs", "error", "message"), [case for case in BAD_ARGUMENTS if "timeout" not in case[0]]
)
async def test_acquire_nowait_rejects_the_same_input_the_same_way(
    pool: GPUResourcePool, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        pool.acquire_nowait(**kwargs)  # type: ignore[arg-type]


async def test_unsatisfiable_is_also_a_value_error(pool: GPUResourcePool) -> None:
    with pytest.raises(ValueError, match="the pool has 2 GPU"):
        await pool.acquire(9)


async def test_fractional_memory_is_rounded_up_not_down(pool: GPUResourcePool) -> None:
    alloc = await pool.acquire(min_memory_mb=1000.2)
    assert alloc.memory_mb == 1001
    await pool.release(alloc)


async def test_release_takes_an_allocation(pool: GPUResourcePool) -> None:
    with pytest.raises(TypeError, match="release takes a GPUAllocation"):
        await pool.release("GPU-0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((None, 1), TypeError, "allocation must be a GPUAllocation of this pool, got None"),
        (("alloc", 1), TypeError, "allocation must be a GPUAllocation of this pool, got 'alloc'"),
        (("held", "x"), TypeError, "pid must be an int >= 1, got 'x'"),
        (("held", 0), ValueError, "pid must be an int >= 1, got 0"),
    ],
)
async def test_register_process_checks_its_arguments(
    pool: GPUResourcePool, args: tuple[object, object], error: type[Exception], message: str
) -> None:
    """Regression: register_process(None, 1) raised AttributeError: 'NoneType' ... 'id'."""
    held = await pool.acquire()
    allocation = held if args[0] == "held" else args[0]
    with pytest.raises(error, match=re.escape(message)):
        pool.register_process(allocation, args[1])  # type: ignore[arg-type]
    await pool.release(held)


# ---------------------------------------------------------------- the pool's own options


class _NotAPolicy:
    def push(self, waiter: object) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_parallel": 0}, ValueError, "max_parallel must be an int >= 1, got 0"),
        ({"max_parallel": 2.5}, TypeError, "max_parallel must be an int >= 1, got 2.5"),
        (
            {"refresh_interval": 0},
            ValueError,
            "refresh_interval must be a finite number of seconds > 0, got 0",
        ),
        (
            {"refresh_interval": math.inf},
            ValueError,
            "refresh_interval must be a finite number of seconds > 0, got inf",
        ),
        (
            {"refresh_interval": HUGE},
            ValueError,
            "refresh_interval must be a finite number of seconds > 0, got 1.000e+400",
        ),
        (
            {"refresh_interval": "1s"},
            TypeError,
            "refresh_interval must be a finite number of seconds > 0, got '1s'",
        ),
        (
            {"settle_timeout": -1},
            ValueError,
            "settle_timeout must be None or a number of seconds >= 0, got -1",
        ),
        (
            {"settle_timeout": HUGE},
            ValueError,
            "settle_timeout must be None or a number of seconds >= 0, got 1.000e+400",
        ),
        ({"policy": 42}, TypeError, "policy must be None or a scheduling policy"),
        (
            {"policy": BackfillPolicy},
            TypeError,
            "got <class 'gpupool._core.backfill.BackfillPolicy'>",
        ),
        ({"policy": _NotAPolicy()}, TypeError, "policy must be None or a scheduling policy"),
        ({"scorer": 42}, TypeError, "scorer must be a plain function of a GPU"),
    ],
)
def test_pool_options_are_validated(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        GPUResourcePool(FakeGPUProvider(count=1), **kwargs)  # type: ignore[arg-type]


def test_an_async_scorer_is_refused() -> None:
    async def scorer(gpu: ScoredGPU) -> float:
        return 1.0

    with pytest.raises(TypeError, match="scorer must be a plain function of a GPU"):
        GPUResourcePool(FakeGPUProvider(count=1), scorer=scorer)  # type: ignore[arg-type]


def test_provider_must_have_a_snapshot_method() -> None:
    with pytest.raises(TypeError, match="snapshot"):
        GPUResourcePool(provider=object())  # type: ignore[arg-type]


async def test_requests_that_differ_only_by_experiment_id_keep_their_own_id() -> None:
    """Plain requests are validated once and reused; an experiment id (the
    runner passes every task's key) must still come through to the allocation,
    and a bad one must still be refused, cached shape or not."""
    async with GPUResourcePool(FakeGPUProvider(count=6)) as pool:
        plain = await pool.acquire(2, min_memory_mb=100)
        first = await pool.acquire(2, min_memory_mb=100, experiment_id="a")
        second = await pool.acquire(2, min_memory_mb=100, experiment_id="b")
        assert (first.experiment_id, second.experiment_id, plain.experiment_id) == (
            "a",
            "b",
            None,
        )
        assert len(first.gpu_indices) == len(second.gpu_indices) == 2
        assert first.memory_mb == second.memory_mb == 100
        with pytest.raises(TypeError, match="experiment_id must be a str or None, got 7"):
            await pool.acquire(2, min_memory_mb=100, experiment_id=7)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="required_gpus must be an int >= 1, got 0"):
            await pool.acquire(0, experiment_id="c")
        for alloc in (plain, first, second):
            await pool.release(alloc)


def test_error_messages_show_values_briefly() -> None:
    assert shown(HUGE) == "1.000e+400 (an int too large for a float)"
    assert shown(10**5000).startswith("1.000e+5000")  # repr() itself would refuse this int
    assert len(shown(list(range(1000)))) == 80
    assert shown(12) == "12"


# ---------------------------------------------------------------- FakeGPUProvider

FAKE_PROVIDER_CASES: list[tuple[Callable[[], object], type[Exception], str]] = [
    (lambda: FakeGPUProvider(count=-1), ValueError, "count must be an int in [0, 1024], got -1"),
    (lambda: FakeGPUProvider(count=1.5), TypeError, "count must be an int in [0, 1024], got 1.5"),  # type: ignore[arg-type]
    (
        lambda: FakeGPUProvider(count=10**7),
        ValueError,
        "count must be an int in [0, 1024], got 10000000",
    ),
    (lambda: FakeGPUProvider(count=2, memory_mb=[1000]), ValueError, "a sequence of 2 ints"),
    (lambda: FakeGPUProvider(count=1, memory_mb="8G"), TypeError, "a sequence of 1 ints, got '8G'"),  # type: ignore[arg-type]
    (
        lambda: FakeGPUProvider(count=1, memory_mb=0),
        ValueError,
        "memory_mb (for every GPU) must be an int >= 1, got 0",
    ),
    (
        lambda: FakeGPUProvider(count=1, utilization_pct=150),
        ValueError,
        "utilization_pct must be a finite number in [0, 100], got 150",
    ),
    (
        lambda: FakeGPUProvider(count=1, utilization_pct=math.nan),
        ValueError,
        "utilization_pct must be a finite number in [0, 100], got nan",
    ),
    (
        lambda: FakeGPUProvider(count=1, utilization_pct="x"),  # type: ignore[arg-type]
        TypeError,
        "utilization_pct must be a finite number in [0, 100], got 'x'",
    ),
    (lambda: FakeGPUProvider(count=1, name=3), TypeError, "name must be a str, got 3"),  # type: ignore[arg-type]
    (
        lambda: FakeGPUProvider(1).set_utilization(0, "x"),  # type: ignore[arg-type]
        TypeError,
        "utilization_pct must be a finite number in [0, 100], got 'x'",
    ),
    (
        lambda: FakeGPUProvider(1).set_utilization(0, -1),
        ValueError,
        "utilization_pct must be a finite number in [0, 100], got -1",
    ),
    (
        lambda: FakeGPUProvider(1).add_process(0, "x", 10),  # type: ignore[arg-type]
        TypeError,
        "pid must be an int >= 1, got 'x'",
    ),
    (lambda: FakeGPUProvider(1).add_process(0, -1, 10), ValueError, "pid must be an int >= 1"),
    (
        lambda: FakeGPUProvider(1).add_process(0, 5, -100),
        ValueError,
        "used_memory_mb must be an int >= 0, got -100",
    ),
    (
        lambda: FakeGPUProvider(1).add_process(5, 5, 100),
        ValueError,
        "index must be an int in [0, 0], got 5",
    ),
    (
        lambda: FakeGPUProvider(1).set_memory_used(0, 1.5),  # type: ignore[arg-type]
        TypeError,
        "memory_mb must be an int >= 0, got 1.5",
    ),
    (
        lambda: FakeGPUProvider(1).set_healthy(0, "no"),  # type: ignore[arg-type]
        TypeError,
        "healthy must be True or False, got 'no'",
    ),
    (
        lambda: FakeGPUProvider(1).fail_next(times="x"),  # type: ignore[arg-type]
        TypeError,
        "times must be an int >= 1, got 'x'",
    ),
    (lambda: FakeGPUProvider(1).fail_next(times=0), ValueError, "times must be an int >= 1, got 0"),
    (
        lambda: FakeGPUProvider(1).fail_next("boom"),  # type: ignore[arg-type]
        TypeError,
        "error must be an exception or None, got 'boom'",
    ),
    (
        lambda: FakeGPUProvider(1).set_latency("x"),  # type: ignore[arg-type]
        TypeError,
        "seconds must be a finite number of seconds >= 0, got 'x'",
    ),
    (
        lambda: FakeGPUProvider(1).set_latency(HUGE),
        ValueError,
        "seconds must be a finite number of seconds >= 0, got 1.000e+400",
    ),
    (
        lambda: FakeGPUProvider(1).set_latency(math.inf),
        ValueError,
        "seconds must be a finite number of seconds >= 0, got inf",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), FAKE_PROVIDER_CASES)
def test_fake_provider_arguments_are_validated_at_the_call(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    """Regression: utilization_pct='x', add_process(pid='x'), memory -100 and others were
    accepted and failed later, as a logged snapshot failure or a wrong number."""
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_the_fake_gpu_count_has_a_documented_bound() -> None:
    assert MAX_FAKE_GPUS == 1024
    assert FakeGPUProvider(MAX_FAKE_GPUS).count == MAX_FAKE_GPUS
    started = time.monotonic()
    with pytest.raises(ValueError, match=re.escape("count must be an int in [0, 1024]")):
        FakeGPUProvider(10**7)  # took minutes (and gigabytes) before the bound
    assert time.monotonic() - started < 5  # generous: it fails before building anything


@pytest.mark.parametrize("command", ["status", "run", "demo"])
def test_fake_gpus_on_the_command_line_is_bounded(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Regression: `gpupool status --fake-gpus 100000000` hung building the fake GPUs."""
    args = {"status": ["status"], "run": ["run", str(tmp_path / "jobs.txt")], "demo": ["demo"]}
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args[command], "--fake-gpus", "100000000"])
    assert exit_info.value.code == 2
    lowest = 2 if command == "demo" else 1
    assert f"must be an int in [{lowest}, 1024], got '100000000'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["status", "reserve", "release", "run"])
def test_an_empty_ledger_path_is_refused(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Regression: `--ledger ""` was the current directory (`Path("")`), where `reserve`
    and `run` made a ledger nobody meant; `status` failed with a traceback."""
    args = {
        "status": ["status"],
        "reserve": ["reserve", "--gpus", "1", "--fake-gpus", "1"],
        "release": ["release", "1"],
        "run": ["run", str(tmp_path / "jobs.txt")],
    }
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args[command], "--ledger", ""])
    assert exit_info.value.code == 2
    assert "argument --ledger: PATH must be a directory, got ''" in capsys.readouterr().err


# ---------------------------------------------------------------- other entry points


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("", ValueError, "journal path must name a file (non-empty, no NUL byte), got ''"),
        ("a\0b", ValueError, "journal path must name a file"),
        (b"j.sqlite", TypeError, "journal path must be a str or os.PathLike, got b'j.sqlite'"),
        (3, TypeError, "journal path must be a str or os.PathLike, got 3"),
    ],
)
def test_journal_path_is_checked(path: object, error: type[Exception], message: str) -> None:
    """Regression: Journal('') failed with a misleading "could not be put in WAL mode"."""
    with pytest.raises(error, match=re.escape(message)):
        Journal(path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"parameters": HUGE},
            ValueError,
            "parameters must be a finite number >= 0, got 1.000e+400",
        ),
        ({"parameters": "7B"}, TypeError, "parameters must be a finite number >= 0, got '7B'"),
        ({"parameters": 1, "overhead": HUGE}, ValueError, "overhead must be a finite number >= 0"),
        ({"parameters": 1, "training": "yes"}, TypeError, "training must be True or False"),
        ({"parameters": 1, "dtype": 16}, TypeError, "dtype must be a str, one of bfloat16"),
        ({"parameters": 1e308, "overhead": 1e10}, ValueError, "beyond the float range"),
    ],
)
def test_estimate_memory_mb_never_overflows_bare(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Regression: estimate_memory_mb(10**400) raised a bare OverflowError naming nothing."""
    with pytest.raises(error, match=re.escape(message)):
        estimate_memory_mb(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"timeout": HUGE},
            ValueError,
            "timeout must be None or a number of seconds >= 0, got 1.0",
        ),
        ({"timeout": -1}, ValueError, "timeout must be None or a number of seconds >= 0, got -1"),
        (
            {"grace_period": HUGE},
            ValueError,
            "grace_period must be a finite number of seconds >= 0",
        ),
        ({"grace_period": math.inf}, ValueError, "grace_period must be a finite number"),
        ({"grace_period": "5"}, TypeError, "grace_period must be a finite number of seconds >= 0"),
    ],
)
async def test_run_process_durations_are_checked(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        await run_process(["true"], **kwargs)


async def _nap(item: int, allocation: GPUAllocation | None) -> int:
    await anyio.lowlevel.checkpoint()
    return item


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"required_gpus": 1, "exclusive": False},
            ValueError,
            "exclusive=False needs min_memory_mb > 0",
        ),
        ({"required_gpus": 1, "exclusive": "no"}, TypeError, "exclusive must be True or False"),
        ({"exclusive": "no"}, TypeError, "exclusive must be True or False, got 'no'"),
        ({"min_memory_mb": -1}, ValueError, "min_memory_mb must be a finite number >= 0, got -1"),
        (
            {"required_gpus": 1, "min_memory_mb": HUGE},
            ValueError,
            "min_memory_mb must be a finite number >= 0, got 1.000e+400",
        ),
        ({"timeout": HUGE}, ValueError, "timeout must be None or a number of seconds >= 0"),
        ({"timeout": math.nan}, ValueError, "timeout must be None or a number of seconds >= 0"),
        ({"retry_backoff": HUGE}, ValueError, "retry_backoff must be a finite number of seconds"),
        ({"priority": "high"}, TypeError, "priority must be an int, got 'high'"),
    ],
)
@pytest.mark.parametrize("entry", ["map", "submit"])
async def test_runner_options_are_checked_at_the_call(
    pool: GPUResourcePool,
    entry: str,
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """Regression: map(..., required_gpus=1, exclusive=False) with no memory was accepted,
    and then every task FAILED with the acquire's error."""
    async with ParallelRunner(pool, max_parallel=2) as runner:

        async def call() -> object:
            if entry == "map":
                return await runner.map(_nap, [1, 2], **kwargs)
            return runner.submit(_nap, 1, **kwargs)

        with pytest.raises(error, match=re.escape(message)):
            await call()
        assert runner.statistics().submitted == 0


async def test_fractional_memory_is_taken_by_the_runner_as_by_acquire(
    pool: GPUResourcePool,
) -> None:
    """One rule for min_memory_mb: a finite number >= 0, rounded up, in map as in acquire."""

    async def memory(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        return allocation.memory_mb

    async with ParallelRunner(pool, max_parallel=2) as runner:
        [result] = await runner.map(memory, [0], required_gpus=1, min_memory_mb=1000.2)
    assert result.value == 1001


async def test_an_async_subscriber_is_refused(pool: GPUResourcePool) -> None:
    """Regression: runner.subscribe(async_cb) was accepted and the callback never ran."""

    async def callback(event: object) -> None: ...

    async with ParallelRunner(pool) as runner:
        with pytest.raises(TypeError, match=re.escape("iterate runner.events()")):
            runner.subscribe(callback)
        with pytest.raises(TypeError, match="callback must be a plain function"):
            runner.subscribe(42)  # type: ignore[arg-type]


async def test_run_blocking_refuses_an_async_function() -> None:
    """Regression: run_blocking(async_fn) returned a coroutine object."""

    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match=r"got the async function .*fetch: .*await it instead"):
        await run_blocking(fetch)


# ---------------------------------------------------------------- timeout=0, one meaning


async def test_timeout_zero_is_a_deadline_of_now_everywhere(pool: GPUResourcePool) -> None:
    """acquire, map, run_blocking and run_process all take timeout=0, with one meaning:
    what can be done at once is done, anything that would have to wait times out."""
    alloc = await pool.acquire(1, timeout=0)  # free now: granted
    await pool.release(alloc)
    with pytest.raises(TimeoutError):
        await run_blocking(time.sleep, 0.05, timeout=0)
    try:
        result = await run_process(["sleep", "5"], timeout=0, grace_period=1)
    except subprocess.CalledProcessError as failed:  # run_process checks the result (item 3)
        result = failed.result  # type: ignore[attr-defined]
    assert result.timed_out
    async with ParallelRunner(pool, max_parallel=2) as runner:

        async def waits(item: int, allocation: GPUAllocation | None) -> int:
            await anyio.sleep(5)
            return item

        [timed_out] = await runner.map(waits, [1], timeout=0)
    assert timed_out.status is TaskStatus.TIMED_OUT


# ---------------------------------------------------------------- scorers


def _nan_once_shared(gpu: ScoredGPU) -> float:
    """Fine on idle GPUs; NaN on an odd GPU with memory in use (a 0/0 in waiting)."""
    if gpu.index % 2 and gpu.memory_free_mb < gpu.memory_total_mb:
        return math.nan
    return gpu.memory_free_mb / gpu.memory_total_mb


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [
        (math.nan, ValueError, "returned nan for GPU 0: a score must be a finite number"),
        (math.inf, ValueError, "returned inf for GPU 0: a score must be a finite number"),
        (HUGE, ValueError, "returned 1.000e+400 (an int too large for a float) for GPU 0"),
        ("high", TypeError, "must return a finite number for GPU 0, got 'high'"),
        (None, TypeError, "must return a finite number for GPU 0, got None"),
        (True, TypeError, "must return a finite number for GPU 0, got True"),
    ],
)
async def test_a_bad_score_on_the_first_snapshot_keeps_the_pool_shut(
    result: object, error: type[Exception], message: str
) -> None:
    def returns(gpu: ScoredGPU) -> Any:
        return result

    pool = GPUResourcePool(FakeGPUProvider(count=2), scorer=returns)
    with pytest.raises(error, match=re.escape(message)) as info:
        async with pool:
            pass  # pragma: no cover - never entered
    assert "test_a_bad_score_on_the_first_snapshot_keeps_the_pool_shut.<locals>.returns" in str(
        info.value
    )
    assert pool.closed


async def test_a_scorer_returning_a_coroutine_gets_a_clear_error() -> None:
    async def score(gpu: ScoredGPU) -> float:
        return 1.0

    def sneaky(gpu: ScoredGPU) -> Any:
        return score(gpu)  # a plain function that hands back a coroutine

    with pytest.raises(TypeError, match="returned a coroutine for GPU 0"):
        async with GPUResourcePool(FakeGPUProvider(count=1), scorer=sneaky):
            pass  # pragma: no cover - never entered


def test_int_scores_are_fine() -> None:
    core = Scheduler([gpu(0), gpu(1)], scorer=lambda g: 10 - g.index, policy=BackfillPolicy())
    alloc = core.grant_at_once(make_request(1), 0)
    assert alloc is not None
    assert alloc.gpu_indices == (0,)


def test_a_scorer_failing_on_a_shared_grant_changes_nothing() -> None:
    core = Scheduler([gpu(0), gpu(1)], scorer=_nan_once_shared, policy=BackfillPolicy())
    before = core.statistics()
    shared = make_request(1, min_memory_mb=1000, exclusive=False, allowed_gpus={1})
    with pytest.raises(ValueError, match="scorer _nan_once_shared returned nan for GPU 1"):
        core.grant_at_once(shared, 0)
    assert core.statistics() == before
    assert core._idle == sorted(core._idle)
    assert [index for _, index in core._idle] == [0, 1]  # both still idle, nothing half done


def test_a_scorer_failing_on_a_release_changes_nothing() -> None:
    calls = 0

    def breaks_later(gpu: ScoredGPU) -> float:
        nonlocal calls
        calls += 1
        return math.nan if calls > 3 else 1.0  # fine for the first snapshot and the grant

    core = Scheduler([gpu(0), gpu(1)], scorer=breaks_later, policy=BackfillPolicy())
    alloc = core.grant_at_once(make_request(1, min_memory_mb=1000, exclusive=False), 0)
    assert alloc is not None
    before = core.statistics()
    with pytest.raises(ValueError, match="returned nan for GPU"):
        core.release(alloc, 1)
    assert core.statistics() == before
    assert core.holds(alloc)


def test_a_scorer_failing_in_a_scheduling_pass_fails_that_waiter_only() -> None:
    """A grant decided inside a pass (a release waking waiters) cannot raise: the other
    decisions of the pass must still be delivered. The waiter whose GPUs the scorer
    failed on gets the error; the others are granted as usual."""
    core = Scheduler([gpu(0), gpu(1)], scorer=_nan_once_shared, policy=BackfillPolicy())
    first = core.grant_at_once(make_request(2), 0)
    assert first is not None
    whole = core.submit(make_request(1), 1)
    shared = core.submit(make_request(1, min_memory_mb=1000, exclusive=False), 2)
    outcomes = {o.ticket: o for o in core.release(first, 3)}
    assert isinstance(outcomes[whole.ticket], Grant)
    failure = outcomes[shared.ticket]
    assert isinstance(failure, Failure)
    assert isinstance(failure.error, ValueError)
    assert "returned nan for GPU 1" in str(failure.error)
    assert core.waiting == 0
    assert len(list(core.holdings())) == 1


async def test_a_waiter_gets_the_scorers_error_from_acquire(pool: GPUResourcePool) -> None:
    async with GPUResourcePool(FakeGPUProvider(count=2), scorer=_nan_once_shared) as bad:
        both = await bad.acquire(2)
        async with anyio.create_task_group() as tg:
            errors: list[BaseException] = []

            async def shared() -> None:
                try:
                    await bad.acquire(1, min_memory_mb=1000, exclusive=False, allowed_gpus=[1])
                except ValueError as exc:
                    errors.append(exc)

            tg.start_soon(shared)
            await anyio.wait_all_tasks_blocked()
            await bad.release(both)
        assert len(errors) == 1
        assert "scorer _nan_once_shared returned nan for GPU 1" in str(errors[0])
        stats = bad.statistics()
        assert (stats.holder_count, stats.waiters) == (0, 0)


async def test_a_bad_score_on_a_later_snapshot_keeps_the_last_good_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeGPUProvider(count=2, memory_mb=16_000)
    async with GPUResourcePool(fake, scorer=_nan_once_shared) as bad:
        fake.set_memory_used(1, 4000)  # GPU 1 now scores NaN
        with caplog.at_level(logging.ERROR, logger="gpupool"):
            await bad.refresh()
        assert "scorer _nan_once_shared returned nan for GPU 1" in caplog.text
        assert [g.memory_foreign_mb for g in bad.statistics().gpus] == [0, 0]  # the old numbers
        alloc = await bad.acquire(2)  # the pool still works
        await bad.release(alloc)


def test_a_storm_with_a_nan_scorer_never_double_grants() -> None:
    """Regression: a scorer returning NaN broke the sorted idle list, and one GPU went to
    two exclusive holders (559-3,054 double grants per storm round), or bisect's answer
    was past the end and ``del`` raised IndexError in the scheduler.

    Random grants (shared and exclusive, at once and through the queue), releases,
    cancels and snapshots with foreign memory, with a scorer that returns NaN for odd
    GPUs with memory in use. Every call either works or raises the scorer's ValueError
    and changes nothing; a waiter the scorer failed for gets that error; no GPU ever
    has two holders where one is exclusive; the idle list stays sorted and exact.
    """
    rng = random.Random(20261201)
    storms = [_Storm(rng) for _ in range(10)]
    for storm in storms:
        for step in range(400):
            storm.step(step)
    doubles = sum(storm.double_grants for storm in storms)
    crashes = collections.Counter(name for storm in storms for name in storm.crashes)
    unsorted = sum(storm.idle_list_wrong for storm in storms)
    assert (doubles, dict(crashes), unsorted) == (0, {}, 0), (
        f"{doubles} double grants, crashes {dict(crashes)}, idle list wrong {unsorted} times"
    )
    raised = [error for storm in storms for error in storm.raised]
    failed = [error for storm in storms for error in storm.failed]
    assert raised, "the scorer never failed: the storm tests nothing"
    assert failed, "no waiter was ever failed by the scorer: the storm tests too little"
    for error in raised + failed:
        assert isinstance(error, ValueError)
        assert "scorer _nan_once_shared returned nan for GPU" in str(error)
    assert not any(storm.changed_on_error for storm in storms), "a call that raised changed it"


class _Storm:
    """Random calls on a core with 8 GPUs and a scorer that sometimes fails, and a count
    of everything that went wrong (the test asserts the counts, so that a failure shows
    how much went wrong rather than only the first thing)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.core = Scheduler(
            [gpu(i, total=16_000) for i in range(8)],
            scorer=_nan_once_shared,
            policy=BackfillPolicy(),
        )
        self.held: list[GPUAllocation] = []
        self.waiting: set[int] = set()
        #: The scorer's errors raised by calls, and those given to waiters.
        self.raised: list[ValueError] = []
        self.failed: list[Exception] = []
        self.changed_on_error = False
        self.double_grants = 0
        self.crashes: list[str] = []
        self.idle_list_wrong = 0

    def step(self, now: int) -> None:
        before = self.core.statistics()
        try:
            self._call(now)
        except ValueError as exc:
            self.raised.append(exc)
            self.changed_on_error |= self.core.statistics() != before
        except Exception as exc:  # a corrupted core: IndexError, AllocationNotHeld, ...
            self.crashes.append(type(exc).__name__)
        if self.core._idle != sorted(self.core._idle) or {i for _, i in self.core._idle} != {
            g.index for g in self.core.statistics().gpus if not g.holder_ids and g.healthy
        }:
            self.idle_list_wrong += 1

    def _call(self, now: int) -> None:
        rng = self.rng
        roll = rng.random()
        if self.held and roll < 0.35:
            alloc = rng.choice(self.held)
            outcomes = self.core.release(alloc, now)
            self.held.remove(alloc)
            self.deliver(outcomes)
        elif self.waiting and roll < 0.4:
            ticket = rng.choice(sorted(self.waiting))
            self.waiting.discard(ticket)
            self.deliver(self.core.cancel(ticket, now))
        elif roll < 0.5:
            used = [rng.choice([0, 0, 2000]) for _ in range(8)]
            snapshot = [gpu(i, total=16_000, used=u) for i, u in enumerate(used)]
            self.deliver(self.core.update(snapshot, now))
        elif roll < 0.75:
            self.hold(self.core.grant_at_once(_random_request(rng), now))
        else:
            submission = self.core.submit(_random_request(rng), now)
            self.deliver(submission.outcomes)
            if submission.error is not None:
                self.failed.append(submission.error)
            elif submission.allocation is None:
                self.waiting.add(submission.ticket)
            self.hold(submission.allocation)

    def deliver(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.waiting.discard(outcome.ticket)
            if isinstance(outcome, Grant):
                self.hold(outcome.allocation)
            else:
                self.failed.append(outcome.error)

    def hold(self, alloc: GPUAllocation | None) -> None:
        if alloc is None:
            return
        for other in self.held:
            shared_gpus = set(other.gpu_indices) & set(alloc.gpu_indices)
            if shared_gpus and (alloc.exclusive or other.exclusive):
                self.double_grants += 1
        self.held.append(alloc)


def _random_request(rng: random.Random) -> Resources:
    exclusive = rng.random() < 0.7
    memory = rng.choice([0, 1000, 3000]) if exclusive else rng.choice([1000, 3000])
    return make_request(
        rng.choice([1, 1, 2, 3]),
        min_memory_mb=memory,
        exclusive=exclusive,
        allowed_gpus=rng.choice([None, None, {0, 1, 2, 3}, {1, 3, 5, 7}]),
    )
