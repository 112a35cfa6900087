"""A run as a timeline: what the journal recorded, as lanes, bars and waits.

Pure: it takes the rows a journal holds (`TaskRecord`, `EventRecord`) and the
time "now" as arguments and returns values; it reads no file and no clock and
draws nothing, so it is tested directly and ``gpupool journal plot`` only
draws what it returns (``gpupool._cli.plot``).

How the events become attempts (docs/journal.md, "Pictures of a run"):

* an attempt starts at its RUNNING event and ends at the task's next event:
  RETRYING (it failed and runs again), a final state, or the QUEUED with
  which a new owner takes over a dead one's journal (it was interrupted);
* its GPUs are the RUNNING event's (schema version 2). A version 1 journal
  kept only the task's last GPUs: they go to its last attempt, an attempt
  that never waited for a GPU is CPU-only, and any other goes to a lane of
  its own, ``GPU ?``, rather than on a GPU it may not have held;
* a wait runs from the moment the task could start (QUEUED, or RETRYING for
  the next attempt) to its RUNNING event, or to its end when it never ran;
* what is still open at the end of the journal ran or waited until ``now``
  when the journal's owner is alive (a live run), else until that owner's
  last event (it died, and nobody took over yet): an attempt cut short so is
  INTERRUPTED.

The layout puts each attempt on one bar per GPU it held, in that GPU's lane,
and CPU-only attempts in a lane of their own. Bars that overlap in a lane (a
shared GPU, CPU jobs side by side) go on rows of the lane: each bar on the
lowest row free at its start, which, taken in order of start, uses as few
rows as the most bars that overlap at one instant. An exclusive run
therefore has one row per GPU lane.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from .._core.results import TaskStatus
from .schema import EventRecord, TaskRecord

__all__ = [
    "Attempt",
    "Bar",
    "Lane",
    "LaneKind",
    "Outcome",
    "Timeline",
    "Wait",
    "attempts_of",
    "build_timeline",
    "lay_out",
    "queue_depth",
]


class Outcome(enum.Enum):
    """How one attempt ended (what colours its bar)."""

    SUCCEEDED = "succeeded"
    RETRIED = "failed, retried"
    FAILED = "failed"
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    RUNNING = "running"


_FINAL_OUTCOME = {
    TaskStatus.SUCCEEDED: Outcome.SUCCEEDED,
    TaskStatus.FAILED: Outcome.FAILED,
    TaskStatus.TIMED_OUT: Outcome.TIMED_OUT,
    TaskStatus.CANCELLED: Outcome.CANCELLED,
}


class LaneKind(enum.Enum):
    GPU = "gpu"
    UNKNOWN_GPU = "unknown gpu"
    CPU = "cpu"


@attrs.frozen
class Attempt:
    """One attempt of one task: when it ran, where, and how it ended.

    ``gpu_indices`` is ``()`` for a CPU-only attempt and None where the
    journal did not record them (schema version 1). ``ready_at`` is when the
    task could have started this attempt (queued, or the previous attempt's
    failure), so ``start - ready_at`` is its wait.
    """

    key: str
    attempt: int
    ready_at: float
    start: float
    end: float
    gpu_indices: tuple[int, ...] | None
    outcome: Outcome
    label: str = ""
    error: str | None = None


@attrs.frozen
class Wait:
    """A task ready to run but not running, from ``start`` to ``end``; ``ran``
    says whether an attempt followed (False: cancelled, or still waiting)."""

    key: str
    attempt: int
    start: float
    end: float
    ran: bool


@attrs.frozen
class Lane:
    """One horizontal band of the picture: a GPU, the GPUs not recorded, or the CPU."""

    kind: LaneKind
    title: str
    gpu: int | None
    rows: int


@attrs.frozen
class Bar:
    """An attempt drawn in ``lane`` (an index into `Timeline.lanes`) on ``row``."""

    attempt: Attempt
    lane: int
    row: int


@attrs.frozen
class Timeline:
    """Everything a picture of a run shows, in Unix times (``origin`` is the first
    event; draw ``t - origin``). ``run_starts`` are the times at which a later
    process started working on the journal (a resume or a takeover)."""

    origin: float
    end: float
    lanes: tuple[Lane, ...]
    bars: tuple[Bar, ...]
    attempts: tuple[Attempt, ...]
    waits: tuple[Wait, ...]
    run_starts: tuple[float, ...]
    live: bool


def build_timeline(
    records: Sequence[TaskRecord],
    events: Sequence[EventRecord],
    *,
    now: float | None = None,
    label: Callable[[TaskRecord], str] | None = None,
) -> Timeline:
    """The timeline of a journal's ``records`` and ``events`` (in commit order).

    ``now`` is given for a live journal (its owner is alive): what is open
    runs or waits until then. ``label`` names a task on its bars (default:
    its key).
    """
    attempts, waits = attempts_of(records, events, now=now, label=label)
    times = [e.at for e in events]
    origin = min(times, default=now if now is not None else 0.0)
    end = max([*times, *(a.end for a in attempts), *(w.end for w in waits)], default=origin)
    if now is not None:
        end = max(end, now)
    lanes, bars = lay_out(attempts)
    return Timeline(
        origin=origin,
        end=end,
        lanes=lanes,
        bars=bars,
        attempts=tuple(attempts),
        waits=tuple(waits),
        run_starts=_run_starts(events),
        live=now is not None,
    )


def attempts_of(
    records: Sequence[TaskRecord],
    events: Sequence[EventRecord],
    *,
    now: float | None = None,
    label: Callable[[TaskRecord], str] | None = None,
) -> tuple[list[Attempt], list[Wait]]:
    """Every attempt and every wait the events record (see the module docstring)."""
    by_key: dict[str, list[EventRecord]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    segment_end = _segment_ends(events)
    record_of = {r.key: r for r in records}
    attempts: list[Attempt] = []
    waits: list[Wait] = []
    for key, task_events in by_key.items():
        record = record_of.get(key)
        name = key if record is None or label is None else label(record)
        _Task(key, name, record, now, segment_end, attempts, waits).replay(task_events)
    attempts.sort(key=lambda a: (a.start, a.key, a.attempt))
    waits.sort(key=lambda w: (w.start, w.key, w.attempt))
    return attempts, waits


@attrs.define
class _Task:
    """One task's events replayed in order: the attempts and waits they make."""

    key: str
    label: str
    record: TaskRecord | None
    now: float | None
    segment_end: Mapping[int, float]
    attempts: list[Attempt]
    waits: list[Wait]
    ready: EventRecord | None = None
    running: EventRecord | None = None
    waited_for_gpu: bool = False

    def replay(self, events: Sequence[EventRecord]) -> None:
        last_running = max(
            (i for i, e in enumerate(events) if e.status is TaskStatus.RUNNING), default=-1
        )
        for index, event in enumerate(events):
            status = event.status
            if status is TaskStatus.QUEUED:
                # A new owner queues again what a dead one left: cut short at its last event.
                if self.running is not None:
                    self._end_attempt(self._died_at(self.running), Outcome.INTERRUPTED, None)
                if self.ready is not None and self.ready.pid != event.pid:
                    self._end_wait(self._died_at(self.ready), ran=False)
                if self.ready is None:
                    self.ready = event
            elif status is TaskStatus.WAITING_FOR_GPU:
                self.waited_for_gpu = True
                if self.ready is None:
                    self.ready = event
            elif status is TaskStatus.RUNNING:
                if self.ready is not None:
                    self._end_wait(event.at, ran=True)
                gpus = event.gpu_indices
                if gpus is None:  # a version 1 journal: see the module docstring
                    gpus = self._v1_gpus(index == last_running)
                self.running = attrs.evolve(event, gpu_indices=gpus)
            elif status is TaskStatus.RETRYING:
                if self.running is not None:
                    self._end_attempt(event.at, Outcome.RETRIED, event.note)
                self.ready = event
            else:  # a final state
                if self.running is not None:
                    error = self.record.error if self.record is not None else None
                    self._end_attempt(event.at, _FINAL_OUTCOME[status], error)
                elif self.ready is not None:
                    self._end_wait(event.at, ran=False)
                self.ready = None
        if self.running is not None:
            if self.now is not None:
                self._end_attempt(self.now, Outcome.RUNNING, None)
            else:
                self._end_attempt(self._died_at(self.running), Outcome.INTERRUPTED, None)
        if self.ready is not None:
            self._end_wait(
                self.now if self.now is not None else self._died_at(self.ready), ran=False
            )

    def _v1_gpus(self, last: bool) -> tuple[int, ...] | None:
        if not self.waited_for_gpu:
            return ()  # only GPU tasks wait for GPUs
        if last and self.record is not None and self.record.gpu_indices:
            return self.record.gpu_indices
        return None

    def _died_at(self, event: EventRecord) -> float:
        return max(event.at, self.segment_end.get(event.seq, event.at))

    def _end_attempt(self, end: float, outcome: Outcome, error: str | None) -> None:
        running = self.running
        assert running is not None
        ready_at = running.at if self.ready is None else self.ready.at
        self.attempts.append(
            Attempt(
                key=self.key,
                attempt=running.attempt,
                ready_at=min(ready_at, running.at),
                start=running.at,
                end=max(end, running.at),
                gpu_indices=running.gpu_indices,
                outcome=outcome,
                label=self.label,
                error=error,
            )
        )
        self.running = None
        self.ready = None
        self.waited_for_gpu = False

    def _end_wait(self, end: float, *, ran: bool) -> None:
        ready = self.ready
        assert ready is not None
        attempt = (
            ready.attempt + 1 if ready.status is TaskStatus.RETRYING else max(ready.attempt, 1)
        )
        self.waits.append(Wait(self.key, attempt, ready.at, max(end, ready.at), ran))
        if not ran:
            self.ready = None


def lay_out(attempts: Iterable[Attempt]) -> tuple[tuple[Lane, ...], tuple[Bar, ...]]:
    """The lanes (GPUs by index, then ``GPU ?``, then CPU; only those used) and
    one bar per attempt and GPU, on rows as the module docstring says."""
    placed: dict[tuple[LaneKind, int | None], list[Attempt]] = {}
    for attempt in attempts:
        if attempt.gpu_indices is None:
            placed.setdefault((LaneKind.UNKNOWN_GPU, None), []).append(attempt)
        elif not attempt.gpu_indices:
            placed.setdefault((LaneKind.CPU, None), []).append(attempt)
        for gpu in attempt.gpu_indices or ():
            placed.setdefault((LaneKind.GPU, gpu), []).append(attempt)
    order = [LaneKind.GPU, LaneKind.UNKNOWN_GPU, LaneKind.CPU]
    lanes: list[Lane] = []
    bars: list[Bar] = []
    for kind, index in sorted(placed, key=lambda k: (order.index(k[0]), k[1] or 0)):
        rows = _rows(placed[kind, index])
        lane = len(lanes)
        height = 1 + max((r for _, r in rows), default=0)
        lanes.append(Lane(kind, _title(kind, index), index, height))
        bars.extend(Bar(attempt, lane, row) for attempt, row in rows)
    return tuple(lanes), tuple(bars)


def _title(kind: LaneKind, gpu: int | None) -> str:
    if kind is LaneKind.GPU:
        return f"GPU {gpu}"
    return "GPU ?" if kind is LaneKind.UNKNOWN_GPU else "CPU"


def _rows(attempts: list[Attempt]) -> list[tuple[Attempt, int]]:
    """Each attempt with its row: the lowest one free at its start.

    Two bars overlap when each starts before the other ends, so a bar that
    ends as another starts leaves its row free, and an instant attempt
    (start == end) inside another bar gets a row of its own rather than
    hide under it. Taken in order of start, this uses as few rows as the
    most bars that overlap one another.
    """
    free_at: list[float] = []  # per row, when its latest bar ends
    rows: list[tuple[Attempt, int]] = []
    for attempt in sorted(attempts, key=lambda a: (a.start, a.end, a.key, a.attempt)):
        row = next((r for r, end in enumerate(free_at) if end <= attempt.start), len(free_at))
        if row == len(free_at):
            free_at.append(attempt.end)
        else:
            free_at[row] = attempt.end
        rows.append((attempt, row))
    return rows


def queue_depth(waits: Iterable[Wait]) -> tuple[tuple[float, int], ...]:
    """How many tasks wait, as steps: ``(t, n)`` means n tasks wait from t to
    the next step (the last step's n is 0 once every wait ended)."""
    changes: dict[float, int] = {}
    for wait in waits:
        if wait.end > wait.start:
            changes[wait.start] = changes.get(wait.start, 0) + 1
            changes[wait.end] = changes.get(wait.end, 0) - 1
    depth = 0
    steps: list[tuple[float, int]] = []
    for t in sorted(changes):
        depth += changes[t]
        steps.append((t, depth))
    return tuple(steps)


def _segment_ends(events: Sequence[EventRecord]) -> dict[int, float]:
    """For each event (by ``seq``), the time of the last event its process wrote
    before another process wrote one: when that run was last seen alive. (By
    turns, not by pid alone: a restarted container may reuse its pid.)"""
    ends: dict[int, float] = {}
    segment: list[EventRecord] = []
    for event in [*events, None]:
        if segment and (event is None or event.pid != segment[-1].pid):
            last = max(e.at for e in segment)
            ends.update((e.seq, last) for e in segment)
            segment = []
        if event is not None:
            segment.append(event)
    return ends


def _run_starts(events: Sequence[EventRecord]) -> tuple[float, ...]:
    """When each process after the first began writing to the journal."""
    return tuple(
        event.at for before, event in itertools.pairwise(events) if event.pid != before.pid
    )
