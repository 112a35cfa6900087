"""A discrete-event simulator that replays a trace of GPU jobs through the real core.

Nothing here schedules: every decision comes from :class:`gpupool`'s own
scheduling core and the policy you pass (the default one unless you say
otherwise), driven in virtual time. A trace of a day of GPU work replays in
seconds, so you can see what a policy would do to *your* workload before you
choose it::

    from gpupool.sim import Job, simulate
    jobs = [Job(arrival=0, gpus=4, duration=600), Job(arrival=0, gpus=1, duration=60)]
    result = simulate(jobs, gpus=8)
    print(result.makespan, result.ratio, result.waits)

Each job asks for ``gpus`` GPUs at ``arrival``, holds them for ``duration``
seconds from the moment it is granted, then releases them. ``hint`` is what
it passes as ``expected_duration`` (it need not equal ``duration``: that is
how to study jobs that outlive their hints). ``estimate`` is what it passes
as ``estimated_duration``, a duration the system learned from history rather
than a promise (docs/scheduling.md, "Durations learned from history").
"""

from __future__ import annotations

import heapq
import math
import statistics
import time
from collections.abc import Sequence
from typing import final

import attrs

from ._core.backfill import BackfillPolicy, FrontInfo, GreedyPolicy
from ._core.checks import check_instance, int_validator, is_int, number_validator, shown
from ._core.decisions import Failure, Grant, Outcome
from ._core.model import GPUAllocation, GPUStats
from ._core.policy import FifoPolicy, SchedulingPolicy
from ._core.request import make_request
from ._core.scheduler import Scheduler
from .providers.fake import DEFAULT_MEMORY_MB, fake_uuid

__all__ = [
    "BackfillPolicy",
    "FifoPolicy",
    "FrontInfo",
    "GreedyPolicy",
    "Job",
    "JobRecord",
    "SimResult",
    "WaitStats",
    "lower_bound",
    "simulate",
]


# A time of the trace (seconds from its start) and a job's GPU count.
_seconds = number_validator(minimum=0)
_count = int_validator(minimum=1)


@attrs.frozen
class Job:
    """One job of a trace: what it asks for, when, and how long it really runs."""

    arrival: float = attrs.field(validator=_seconds)
    duration: float = attrs.field(validator=_seconds)
    gpus: int = attrs.field(default=1, validator=_count)
    memory_mb: int = 0
    exclusive: bool = True
    #: Passed as ``expected_duration``; ``None``: no hint.
    hint: float | None = None
    priority: int = 0
    allowed_gpus: frozenset[int] | None = None
    name: str | None = None
    #: Passed as ``estimated_duration`` (trusted less than a hint); ``None``: none.
    estimate: float | None = None


@attrs.frozen
class JobRecord:
    """What happened to one job."""

    job: Job
    #: Position in the trace.
    index: int
    start: float
    end: float
    gpu_indices: tuple[int, ...]
    #: When it reached the front of the queue (``BackfillPolicy`` only; ``None`` otherwise
    #: or if it never had to wait there).
    reached_front_at: float | None = None
    #: The earliest start the policy reserved for it at the front, if any.
    reserved_start: float | None = None

    @property
    def wait(self) -> float:
        return self.start - self.job.arrival


@attrs.frozen
class WaitStats:
    """Waiting times (seconds from arrival to start) of the jobs of one size."""

    gpus: int
    count: int
    median: float
    p95: float
    max: float


@attrs.frozen
class SimResult:
    """The outcome of :func:`simulate`."""

    records: tuple[JobRecord, ...]
    gpu_count: int
    #: From the first arrival to the last end.
    makespan: float
    #: ``max(sum(gpus * duration) / gpu_count, max(arrival + duration) - first arrival)``.
    lower_bound: float
    #: Busy GPU-seconds over ``gpu_count * makespan``.
    utilization: float
    #: Waiting times per job size, smallest size first.
    waits: tuple[WaitStats, ...]
    #: Calls into the core (submits and releases), each one scheduling decision.
    decisions: int
    #: CPU seconds spent inside those calls (process time; noisy, for benchmarks).
    core_seconds: float

    @property
    def ratio(self) -> float:
        """``makespan / lower_bound`` (1.0 is optimal; 1.0 for an empty trace)."""
        return self.makespan / self.lower_bound if self.lower_bound > 0 else 1.0

    def wait(self, gpus: int) -> WaitStats:
        """The waiting times of jobs of ``gpus`` GPUs."""
        for stats in self.waits:
            if stats.gpus == gpus:
                return stats
        raise KeyError(f"no job of {gpus} GPU(s) in the trace; sizes are {self.sizes}")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.gpus for s in self.waits)


def lower_bound(jobs: Sequence[Job], gpu_count: int) -> float:
    """No schedule can finish ``jobs`` on ``gpu_count`` GPUs sooner than this (seconds).

    The work bound (GPU-seconds over GPUs) or the longest job counted from
    the first arrival, whichever is larger. Shared jobs count as whole GPUs,
    so for them it is a bound of whole-GPU scheduling only.
    """
    if not jobs:
        return 0.0
    first = min(j.arrival for j in jobs)
    work = sum(j.gpus * j.duration for j in jobs) / gpu_count
    return max(work, max(j.arrival + j.duration for j in jobs) - first)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _default_gpus(count: int, memory_mb: int) -> list[GPUStats]:
    return [
        GPUStats(
            index=i,
            uuid=fake_uuid(i),
            name="Simulated GPU",
            memory_total_mb=memory_mb,
            memory_used_mb=0,
            utilization_pct=0.0,
        )
        for i in range(count)
    ]


_RELEASE = 0  # at equal times, releases go before arrivals: freed GPUs are free at once
_ARRIVAL = 1


@final
class _Run:
    def __init__(
        self, jobs: Sequence[Job], core: Scheduler, policy: SchedulingPolicy | None
    ) -> None:
        self.jobs = jobs
        self.core = core
        self.policy = policy
        self.events: list[tuple[float, int, int]] = []
        self.by_ticket: dict[int, int] = {}
        self.held: dict[int, GPUAllocation] = {}
        self.start: dict[int, float] = {}
        self.gpus: dict[int, tuple[int, ...]] = {}
        self.fronts: dict[int, float] = {}
        self.reserved: dict[int, float] = {}
        self.decisions = 0
        self.core_seconds = 0.0

    def run(self) -> None:
        for index, job in enumerate(self.jobs):
            heapq.heappush(self.events, (job.arrival, _ARRIVAL, index))
        while self.events:
            now, kind, index = heapq.heappop(self.events)
            if kind == _ARRIVAL:
                self.arrive(index, now)
            else:
                self.finish(index, now)
            self.observe()
        if self.core.waiting:  # pragma: no cover - would be a bug in the core or policy
            raise RuntimeError(f"{self.core.waiting} job(s) never started: the policy stalled")

    def arrive(self, index: int, now: float) -> None:
        job = self.jobs[index]
        request = make_request(
            job.gpus,
            min_memory_mb=job.memory_mb,
            exclusive=job.exclusive,
            priority=job.priority,
            allowed_gpus=job.allowed_gpus,
            expected_duration=job.hint,
        )
        if job.estimate is not None:
            request = attrs.evolve(request, estimated_duration=job.estimate)
        began = time.process_time()
        submission = self.core.submit(request, now)
        self.core_seconds += time.process_time() - began
        self.decisions += 1
        self.by_ticket[submission.ticket] = index
        if submission.allocation is not None:
            self.begin(index, submission.allocation, now)
        self.apply(submission.outcomes, now)

    def finish(self, index: int, now: float) -> None:
        began = time.process_time()
        outcomes = self.core.release(self.held.pop(index), now)
        self.core_seconds += time.process_time() - began
        self.decisions += 1
        self.apply(outcomes, now)

    def apply(self, outcomes: list[Outcome], now: float) -> None:
        for outcome in outcomes:
            index = self.by_ticket[outcome.ticket]
            if isinstance(outcome, Failure):
                raise outcome.error
            assert isinstance(outcome, Grant)
            self.begin(index, outcome.allocation, now)

    def begin(self, index: int, allocation: GPUAllocation, now: float) -> None:
        self.held[index] = allocation
        self.start[index] = now
        self.gpus[index] = allocation.gpu_indices
        heapq.heappush(self.events, (now + self.jobs[index].duration, _RELEASE, index))

    def observe(self) -> None:
        if not isinstance(self.policy, BackfillPolicy):
            return
        front: FrontInfo | None = self.policy.front()
        if front is None:
            return
        index = self.by_ticket[front.ticket]
        self.fronts.setdefault(index, front.reached_front_at)
        if front.reserved_start is not None:
            self.reserved[index] = min(self.reserved.get(index, math.inf), front.reserved_start)


def simulate(
    jobs: Sequence[Job],
    *,
    gpus: int | Sequence[GPUStats] = 8,
    policy: SchedulingPolicy | None = None,
    max_parallel: int | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> SimResult:
    """Replay ``jobs`` through a :class:`~gpupool._core.scheduler.Scheduler` in virtual time.

    ``gpus`` is a GPU count (identical GPUs of ``memory_mb`` each) or a list
    of :class:`gpupool.GPUStats`. ``policy`` is a fresh policy object (a
    policy holds a queue, so do not share one between runs); ``None`` means
    the pool's default, :class:`BackfillPolicy`. Raises
    :class:`gpupool.UnsatisfiableRequest` if a job could never run on these GPUs.
    """
    allowed = "an int >= 1 or a non-empty list of GPUStats"
    if is_int(gpus):
        if gpus < 1:
            raise ValueError(f"gpus must be {allowed}, got {shown(gpus)}")
        snapshot = _default_gpus(gpus, memory_mb)
    elif isinstance(gpus, Sequence) and all(isinstance(g, GPUStats) for g in gpus):
        if not gpus:
            raise ValueError(f"gpus must be {allowed}, got {shown(gpus)}")
        snapshot = list(gpus)
    else:
        raise TypeError(f"gpus must be {allowed}, got {shown(gpus)}")
    for job in jobs:
        check_instance("jobs", job, Job, "gpupool.sim.Job objects")
    chosen = policy if policy is not None else BackfillPolicy()
    if len(chosen):
        raise ValueError("policy must be a fresh policy object with an empty queue")
    core = Scheduler(snapshot, max_parallel=max_parallel, policy=chosen)
    run = _Run(jobs, core, chosen)
    run.run()
    records = tuple(
        JobRecord(
            job=job,
            index=i,
            start=run.start[i],
            end=run.start[i] + job.duration,
            gpu_indices=run.gpus[i],
            reached_front_at=run.fronts.get(i),
            reserved_start=run.reserved.get(i),
        )
        for i, job in enumerate(jobs)
    )
    count = len(snapshot)
    if records:
        first = min(j.arrival for j in jobs)
        makespan = max(r.end for r in records) - first
    else:
        makespan = 0.0
    busy = sum(j.gpus * j.duration for j in jobs)
    waits = []
    for size in sorted({j.gpus for j in jobs}):
        values = sorted(r.wait for r in records if r.job.gpus == size)
        waits.append(
            WaitStats(
                gpus=size,
                count=len(values),
                median=statistics.median(values),
                p95=_percentile(values, 0.95),
                max=values[-1],
            )
        )
    return SimResult(
        records=records,
        gpu_count=count,
        makespan=makespan,
        lower_bound=lower_bound(jobs, count),
        utilization=busy / (count * makespan) if makespan > 0 else 0.0,
        waits=tuple(waits),
        decisions=run.decisions,
        core_seconds=run.core_seconds,
    )
