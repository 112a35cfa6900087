"""The pure timeline of a journal (gpupool._journal.timeline): events in, lanes and bars out."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from gpupool import TaskStatus
from gpupool._journal.schema import EventRecord, TaskRecord
from gpupool._journal.timeline import (
    Attempt,
    LaneKind,
    Outcome,
    Wait,
    build_timeline,
    lay_out,
    queue_depth,
)

S = TaskStatus


class Log:
    """Events as a journal commits them: ``seq`` in order, one pid unless told."""

    def __init__(self) -> None:
        self.events: list[EventRecord] = []

    def add(
        self,
        key: str,
        status: TaskStatus,
        at: float,
        attempt: int = 0,
        gpus: tuple[int, ...] | None = (),
        *,
        pid: int = 100,
        note: str | None = None,
    ) -> Log:
        self.events.append(
            EventRecord(len(self.events) + 1, key, status, attempt, at, pid, note, gpus)
        )
        return self


def record(key: str, *, gpus: tuple[int, ...] = (), error: str | None = None) -> TaskRecord:
    return TaskRecord(
        key=key,
        fn="f",
        item={"lr": 0.1},
        status=S.SUCCEEDED,
        attempts=1,
        starts=1,
        interrupted=0,
        gpu_indices=gpus,
        value=None,
        error=error,
        traceback=None,
        duration_s=None,
        created_at=0.0,
        updated_at=0.0,
        finished_at=None,
    )


def _summary(timeline_attempts: Sequence[Attempt]) -> list[tuple[object, ...]]:
    return [
        (a.key, a.attempt, a.ready_at, a.start, a.end, a.gpu_indices, a.outcome)
        for a in timeline_attempts
    ]


def test_a_retried_task_has_one_bar_per_attempt_each_on_the_gpu_it_held() -> None:
    log = (
        Log()
        .add("t", S.QUEUED, 0)
        .add("t", S.WAITING_FOR_GPU, 0, 1)
        .add("t", S.RUNNING, 1, 1, (3,))
        .add("t", S.RETRYING, 4, 1, (3,), note="ValueError: boom")
        .add("t", S.WAITING_FOR_GPU, 5, 2)
        .add("t", S.RUNNING, 6, 2, (0,))
        .add("t", S.FAILED, 9, 2, (0,))
    )
    timeline = build_timeline([record("t", error="KeyError: x")], log.events)
    assert _summary(timeline.attempts) == [
        ("t", 1, 0, 1, 4, (3,), Outcome.RETRIED),
        ("t", 2, 4, 6, 9, (0,), Outcome.FAILED),
    ]
    assert [a.error for a in timeline.attempts] == ["ValueError: boom", "KeyError: x"]
    assert [(lane.title, lane.rows) for lane in timeline.lanes] == [("GPU 0", 1), ("GPU 3", 1)]
    assert timeline.waits == (Wait("t", 1, 0, 1, True), Wait("t", 2, 4, 6, True))
    assert (timeline.origin, timeline.end, timeline.live) == (0, 9, False)


def test_cpu_only_attempts_have_a_lane_of_their_own_with_rows_for_overlaps() -> None:
    log = Log()
    for key, start, end in (("a", 1, 5), ("b", 2, 3), ("c", 3, 6), ("d", 5, 7)):
        log.add(key, S.QUEUED, 0).add(key, S.RUNNING, start, 1, ()).add(key, S.SUCCEEDED, end, 1)
    log.add("g", S.QUEUED, 0).add("g", S.RUNNING, 0, 1, (1, 0)).add("g", S.SUCCEEDED, 2, 1)
    timeline = build_timeline([], log.events)
    assert [(lane.kind, lane.title, lane.rows) for lane in timeline.lanes] == [
        (LaneKind.GPU, "GPU 0", 1),
        (LaneKind.GPU, "GPU 1", 1),
        (LaneKind.CPU, "CPU", 2),
    ]
    rows = {b.attempt.key: b.row for b in timeline.bars if b.lane == 2}
    # a [1,5) row 0; b [2,3) row 1; c [3,6) reuses row 1 as b ends; d [5,7) reuses row 0.
    assert rows == {"a": 0, "b": 1, "c": 1, "d": 0}
    assert sorted(b.lane for b in timeline.bars if b.attempt.key == "g") == [0, 1]


def test_a_live_journal_draws_what_runs_and_waits_up_to_now() -> None:
    log = (
        Log()
        .add("r", S.QUEUED, 0)
        .add("r", S.RUNNING, 1, 1, (0,))
        .add("w", S.QUEUED, 0)
        .add("w", S.WAITING_FOR_GPU, 0, 1)
    )
    timeline = build_timeline([], log.events, now=10)
    assert _summary(timeline.attempts) == [("r", 1, 0, 1, 10, (0,), Outcome.RUNNING)]
    assert timeline.waits == (Wait("r", 1, 0, 1, True), Wait("w", 1, 0, 10, False))
    assert (timeline.end, timeline.live) == (10, True)


def test_a_dead_owners_open_attempt_ends_at_its_last_event_and_a_takeover_starts_a_run() -> None:
    log = (
        Log()
        .add("a", S.QUEUED, 0, pid=1)
        .add("a", S.RUNNING, 1, 1, (0,), pid=1)
        .add("b", S.QUEUED, 2, pid=1)
        # pid 1 died; an hour later pid 1 again (a restarted container) takes over.
        .add("a", S.QUEUED, 3600, 1, (), pid=2, note="interrupted: ...")
        .add("b", S.QUEUED, 3600, 0, (), pid=2, note="requeued from queued")
        .add("a", S.RUNNING, 3601, 1, (1,), pid=2)
        .add("a", S.SUCCEEDED, 3602, 1, (1,), pid=2)
    )
    timeline = build_timeline([], log.events)
    assert _summary(timeline.attempts) == [
        ("a", 1, 0, 1, 2, (0,), Outcome.INTERRUPTED),
        ("a", 1, 3600, 3601, 3602, (1,), Outcome.SUCCEEDED),
    ]
    assert timeline.run_starts == (3600,)
    # b waited in the first run until its owner was last seen, then again in the second.
    assert [w for w in timeline.waits if w.key == "b"] == [
        Wait("b", 1, 2, 2, False),
        Wait("b", 1, 3600, 3602, False),
    ]


def test_a_version_1_journal_puts_only_the_last_attempt_on_its_recorded_gpus() -> None:
    log = (
        Log()
        .add("g", S.QUEUED, 0, gpus=None)
        .add("g", S.WAITING_FOR_GPU, 0, 1, None)
        .add("g", S.RUNNING, 1, 1, None)
        .add("g", S.RETRYING, 2, 1, None)
        .add("g", S.WAITING_FOR_GPU, 2, 2, None)
        .add("g", S.RUNNING, 3, 2, None)
        .add("g", S.SUCCEEDED, 4, 2, None)
        .add("c", S.QUEUED, 0, gpus=None)
        .add("c", S.RUNNING, 1, 1, None)
        .add("c", S.SUCCEEDED, 2, 1, None)
    )
    timeline = build_timeline([record("g", gpus=(2,)), record("c")], log.events)
    assert [(a.key, a.attempt, a.gpu_indices) for a in timeline.attempts] == [
        ("c", 1, ()),
        ("g", 1, None),
        ("g", 2, (2,)),
    ]
    assert [lane.title for lane in timeline.lanes] == ["GPU 2", "GPU ?", "CPU"]


def test_a_task_cancelled_while_it_waited_has_a_wait_and_no_bar() -> None:
    log = Log().add("t", S.QUEUED, 0).add("t", S.WAITING_FOR_GPU, 0, 1).add("t", S.CANCELLED, 5, 1)
    timeline = build_timeline([], log.events)
    assert (timeline.attempts, timeline.bars) == ((), ())
    assert timeline.waits == (Wait("t", 1, 0, 5, False),)


def test_queue_depth_counts_the_waits_at_each_instant() -> None:
    waits = [Wait("a", 1, 0, 4, True), Wait("b", 1, 1, 2, True), Wait("c", 1, 2, 2, True)]
    assert queue_depth(waits) == ((0, 1), (1, 2), (2, 1), (4, 0))
    assert queue_depth([]) == ()


# -- properties -----------------------------------------------------------------


@st.composite
def exclusive_schedules(draw: st.DrawFn) -> list[Attempt]:
    """Attempts on up to 4 GPUs, each GPU held by one attempt at a time (an
    exclusive run), some CPU-only ones overlapping freely."""
    gpus = draw(st.integers(1, 4))
    free_at = [0.0] * gpus
    attempts = []
    for number in range(draw(st.integers(0, 25))):
        held = tuple(sorted(draw(st.sets(st.integers(0, gpus - 1), max_size=gpus))))
        gap = draw(st.floats(0, 5))
        start = max([free_at[g] for g in held], default=draw(st.floats(0, 50))) + gap
        end = start + draw(st.floats(0, 10))
        for g in held:
            free_at[g] = end
        attempts.append(Attempt(f"k{number}", 1, start, start, end, held, Outcome.SUCCEEDED))
    return attempts


@given(exclusive_schedules())
def test_an_exclusive_run_has_one_row_per_gpu_lane_and_no_overlapping_bars(
    attempts: list[Attempt],
) -> None:
    lanes, bars = lay_out(attempts)
    for index, lane in enumerate(lanes):
        if lane.kind is LaneKind.GPU:
            assert lane.rows == 1
        in_lane = sorted((b for b in bars if b.lane == index), key=lambda b: b.attempt.start)
        for row in range(lane.rows):
            on_row = [b.attempt for b in in_lane if b.row == row]
            for before, after in itertools.pairwise(on_row):
                assert before.end <= after.start
    # One bar per GPU held, one for a CPU-only attempt.
    assert len(bars) == sum(max(1, len(a.gpu_indices or ())) for a in attempts)


intervals = st.lists(
    st.tuples(st.floats(0, 100), st.floats(0, 20)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=30,
)


def _overlap(a: Attempt, b: Attempt) -> bool:
    return a.start < b.end and b.start < a.end


@given(intervals)
def test_rows_never_overlap_and_are_as_few_as_the_most_bars_that_overlap(
    spans: list[tuple[float, float]],
) -> None:
    attempts = [
        Attempt(f"k{i}", 1, s, s, e, (), Outcome.SUCCEEDED) for i, (s, e) in enumerate(spans)
    ]
    lanes, bars = lay_out(attempts)
    if not spans:
        assert (lanes, bars) == ((), ())
        return
    (lane,) = lanes
    for a, b in itertools.combinations(bars, 2):
        if a.row == b.row:
            assert not _overlap(a.attempt, b.attempt)
    # The largest set of bars that overlap one another: for each bar, it and the
    # bars that start no later and overlap it (intervals: a common point).
    ordered = sorted(attempts, key=lambda a: (a.start, a.end, a.key))
    most = max(1 + sum(_overlap(a, b) for a in ordered[:i]) for i, b in enumerate(ordered))
    assert lane.rows == most


@st.composite
def runner_logs(draw: st.DrawFn) -> tuple[Log, int]:
    """Events as the runner records them for a few tasks (QUEUED, then per attempt
    WAITING_FOR_GPU for a GPU task, RUNNING, then RETRYING or a final state; the
    last task may stop anywhere), interleaved in time; and how many RUNNING."""
    per_task: list[list[tuple[float, str, TaskStatus, int, tuple[int, ...]]]] = []
    for number in range(draw(st.integers(1, 6))):
        key, t = f"k{number}", draw(st.floats(0, 10))
        gpus = tuple(sorted(draw(st.sets(st.integers(0, 3), max_size=2))))
        events = [(t, key, S.QUEUED, 0, ())]
        attempts = draw(st.integers(1, 3))
        for attempt in range(1, attempts + 1):
            if gpus:
                events.append((t, key, S.WAITING_FOR_GPU, attempt, ()))
            t += draw(st.floats(0, 5))
            events.append((t, key, S.RUNNING, attempt, gpus))
            t += draw(st.floats(0, 5))
            last = attempt == attempts
            end = (
                draw(st.sampled_from([S.SUCCEEDED, S.FAILED, S.TIMED_OUT])) if last else S.RETRYING
            )
            events.append((t, key, end, attempt, gpus))
            t += draw(st.floats(0, 2))
        per_task.append(events)
    # The last task's events may be cut anywhere: a live run, or one that died.
    per_task[-1] = per_task[-1][: draw(st.integers(1, len(per_task[-1])))]
    log = Log()
    # Commit order: by time, a task's own events in their order.
    ordered = sorted(
        ((e[0], task, i), e) for task, events in enumerate(per_task) for i, e in enumerate(events)
    )
    for _, (at, key, status, attempt, gpus) in ordered:
        log.add(key, status, at, attempt, gpus)
    return log, sum(e[2] is S.RUNNING for events in per_task for e in events)


@given(runner_logs(), st.booleans())
def test_every_running_event_is_one_attempt_and_a_tasks_attempts_follow_each_other(
    drawn: tuple[Log, int], live: bool
) -> None:
    log, runs = drawn
    now = max(e.at for e in log.events) + 1 if live else None
    timeline = build_timeline([], log.events, now=now)
    assert len(timeline.attempts) == runs
    for key in {a.key for a in timeline.attempts}:
        mine = sorted((a for a in timeline.attempts if a.key == key), key=lambda a: a.attempt)
        assert [a.attempt for a in mine] == list(range(1, len(mine) + 1))
        for before, after in itertools.pairwise(mine):
            assert before.outcome is Outcome.RETRIED
            assert before.end <= after.ready_at <= after.start
    for attempt in timeline.attempts:
        assert attempt.ready_at <= attempt.start <= attempt.end <= timeline.end
        # What is still open runs until now in a live run; else its run died (one pid
        # here, so nothing is interrupted by a takeover).
        cut_short = Outcome.INTERRUPTED if not live else Outcome.RUNNING
        assert attempt.outcome is not (Outcome.RUNNING if not live else Outcome.INTERRUPTED)
        if attempt.outcome is cut_short and live:
            assert attempt.end == now
    for wait in timeline.waits:
        assert timeline.origin <= wait.start <= wait.end <= timeline.end
