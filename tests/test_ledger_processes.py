"""The machine-wide ledger across real processes: no double-booking, fairness, wake-ups.

Every test starts real worker processes (tests/scripts/ledger_worker.py, run
with ``sys.executable``) that share one ledger directory over the same fake
GPUs (``FakeGPUProvider``'s UUIDs are the same in every process). Nothing is
taken on the workers' word: each one records the intervals it held GPUs
(``time.monotonic()``, the same clock in every process on Linux, read after
the acquire returned and before the release), and the test merges them. Two
recorded intervals that overlap on an exclusive GPU mean two processes held
it at once; shared reservations are summed over time. Every wait is bounded
(a worker that hangs fails the test, it never blocks the suite), and no
assertion is about speed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from gpupool._ledger import wakeup
from gpupool._ledger.rows import LedgerState
from gpupool._ledger.store import LedgerStore

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "ledger_worker.py"

#: How long any one step may take before the test calls it a hang (never a speed claim).
PATIENCE = 60.0

BACKENDS = ["asyncio", "trio"]


@attrs.frozen
class Interval:
    """One GPU held by one allocation of one process, as the holder recorded it."""

    uuid: str
    start: float
    end: float
    memory_mb: int
    exclusive: bool
    source: str


class Worker:
    """One worker process, its stdout read line by line in a thread."""

    def __init__(self, name: str, backend: str, ledger: Path, mode: str, *args: str) -> None:
        self.name = name
        self.out = ledger.parent / f"{name}.intervals"
        self._stderr_path = ledger.parent / f"{name}.stderr"
        with open(self._stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    backend,
                    str(ledger),
                    mode,
                    "--out",
                    str(self.out),
                    *args,
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def stderr(self) -> str:
        return self._stderr_path.read_text()

    def expect(self, word: str, timeout: float = PATIENCE) -> list[str]:
        """The words after the next line starting with ``word`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{self.name}: no {word!r} within {timeout} s\n{self.stderr()}")
            if line is None:
                self.process.wait(timeout=PATIENCE)
                pytest.fail(
                    f"{self.name} exited ({self.process.returncode}) before {word!r}\n"
                    f"{self.stderr()}"
                )
            words = line.split()
            if words and words[0] == word:
                return words[1:]

    def nothing_for(self, seconds: float) -> list[str]:
        """The lines printed within ``seconds`` (to show that nothing came)."""
        seen = []
        deadline = time.monotonic() + seconds
        with contextlib.suppress(queue.Empty):
            while (left := deadline - time.monotonic()) > 0:
                line = self._lines.get(timeout=left)
                if line is not None:
                    seen.append(line)
        return seen

    def send(self, line: str = "") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        """Wait for a clean exit (stdin closed first, so no worker waits on it)."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            code = self.process.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not finish within {PATIENCE} s (a hang)\n{self.stderr()}")
        assert code == 0, f"{self.name} exited with {code}\n{self.stderr()}"

    def intervals(self) -> list[Interval]:
        if not self.out.exists():
            return []
        found = []
        for line in self.out.read_text().splitlines():
            uuid, start, end, memory, exclusive = line.split()
            found.append(
                Interval(uuid, float(start), float(end), int(memory), exclusive == "1", self.name)
            )
        return found


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger"


@pytest.fixture
def spawn(ledger: Path) -> Iterator[Callable[..., Worker]]:
    """Start workers on ``ledger``; whatever is still running at the end is killed."""
    started: list[Worker] = []

    def start(name: str, backend: str, mode: str, *args: str) -> Worker:
        worker = Worker(name, backend, ledger, mode, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()
        if worker.process.stdin is not None:
            worker.process.stdin.close()
        if worker.process.stdout is not None:
            worker.process.stdout.close()


# ------------------------------------------------------------ the oracle


def _by_gpu(intervals: list[Interval]) -> dict[str, list[Interval]]:
    by_gpu: dict[str, list[Interval]] = defaultdict(list)
    for interval in intervals:
        by_gpu[interval.uuid].append(interval)
    return by_gpu


def double_bookings(intervals: list[Interval]) -> list[tuple[Interval, Interval]]:
    """Pairs of intervals on one GPU that overlap where either of them is exclusive."""
    clashes = []
    for on_gpu in _by_gpu(intervals).values():
        on_gpu.sort(key=lambda i: i.start)
        for n, first in enumerate(on_gpu):
            for second in on_gpu[n + 1 :]:
                if second.start >= first.end:
                    break
                if first.exclusive or second.exclusive:
                    clashes.append((first, second))
    return clashes


def peak_memory(intervals: list[Interval]) -> dict[str, tuple[int, int]]:
    """Per GPU: the most memory reserved at one moment, and the most holders at one moment."""
    peaks = {}
    for uuid, on_gpu in _by_gpu(intervals).items():
        # At equal times an end comes before a start: intervals that touch do not overlap.
        events = sorted(
            [(i.start, 1, i.memory_mb) for i in on_gpu] + [(i.end, 0, -i.memory_mb) for i in on_gpu]
        )
        memory = holders = top_memory = top_holders = 0
        for _, is_start, change in events:
            memory += change
            holders += 1 if is_start else -1
            top_memory, top_holders = max(top_memory, memory), max(top_holders, holders)
        peaks[uuid] = (top_memory, top_holders)
    return peaks


def test_the_oracle_sees_a_double_booking() -> None:
    """The checks below can fail: overlapping intervals are found, touching ones are not."""
    a = Interval("gpu", 1.0, 2.0, 100, True, "a")
    assert double_bookings([a, attrs.evolve(a, start=1.5, end=3.0, source="b")])
    assert not double_bookings([a, attrs.evolve(a, start=2.0, end=3.0, source="b")])
    assert double_bookings(
        [a, attrs.evolve(a, start=0.0, end=5.0, source="b"), attrs.evolve(a, start=3, end=4)]
    )
    shared = attrs.evolve(a, exclusive=False)
    assert not double_bookings([shared, attrs.evolve(shared, start=1.5, end=3.0)])
    assert peak_memory([shared, attrs.evolve(shared, start=1.5, end=3.0)]) == {"gpu": (200, 2)}
    assert peak_memory([shared, attrs.evolve(shared, start=2.0, end=3.0)]) == {"gpu": (100, 1)}


# ------------------------------------------------------------ the ledger afterwards


def _state(ledger: Path) -> LedgerState:
    store = LedgerStore(ledger)
    try:
        return store.read()
    finally:
        store.close_connection()


def _queued(ledger: Path, worker: Worker) -> bool:
    """Whether ``worker`` has a request waiting in the machine-wide queue."""
    state = _state(ledger)
    mine = {m.id for m in state.members.values() if m.pid == worker.pid}
    return any(w.member in mine and w.state == "waiting" for w in state.waiters.values())


def _wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {PATIENCE} s: {what}")
        time.sleep(0.01)


def _wait_queued(ledger: Path, worker: Worker) -> None:
    _wait_until(f"{worker.name} is queued", lambda: _queued(ledger, worker))


def assert_ledger_empty_and_sound(ledger: Path) -> None:
    """After every worker exited: nothing held, queued or joined, and SQLite finds no damage."""
    with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for table in ("holds", "waiters", "members", "settles"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            assert rows == [], f"{table} still has {rows}"
    assert sorted(os.listdir(ledger / "members")) == []


# ------------------------------------------------------------ no double-booking


def _run_cycles(spawn: Callable[..., Worker], workers: list[tuple[str, str]]) -> list[Interval]:
    """Start a cycling worker for each (backend, options), let them all go at once, wait
    for all of them to finish, and return every interval they recorded."""
    started = [
        spawn(f"w{n}", backend, "cycles", "--seed", str(n), *options.split())
        for n, (backend, options) in enumerate(workers)
    ]
    for worker in started:
        worker.expect("ready")
    for worker in started:
        worker.send("go")
    for worker in started:
        worker.finish()
    return [i for w in started for i in w.intervals()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_processes_never_hold_one_gpu_at_once(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    """4 processes x 300 cycles on 2 exclusive GPUs: no recorded intervals overlap."""
    intervals = _run_cycles(spawn, [(backend, "--count 2 --cycles 300 --hold 0.002")] * 4)
    assert len(intervals) == 4 * 300
    assert double_bookings(intervals) == []
    assert {i.uuid for i in intervals} == {
        "GPU-fa4e0000-0000-4000-8000-000000000000",
        "GPU-fa4e0000-0000-4000-8000-000000000001",
    }
    assert_ledger_empty_and_sound(ledger)


@pytest.mark.parametrize(
    "cycles",
    [60, pytest.param(500, marks=[pytest.mark.soak, pytest.mark.timeout(600)], id="soak")],
    ids=str,
)
def test_eight_processes_of_both_backends_never_double_book(
    spawn: Callable[..., Worker], ledger: Path, cycles: int
) -> None:
    """8 processes (asyncio and trio mixed), 2 tasks each, 60 cycles a task (500 in the
    soak variant), on 3 GPUs, two of them asking for 2 GPUs at a time: no GPU is ever
    held twice."""
    options = f"--count 3 --tasks 2 --cycles {cycles} --hold 0.002 --gpus"
    intervals = _run_cycles(
        spawn,
        [
            (backend, f"{options} {2 if n % 4 == 3 else 1}")
            for n, backend in enumerate(BACKENDS * 4)
        ],
    )
    assert len(intervals) == (6 * 2 * cycles) + (2 * 2 * cycles * 2)
    assert double_bookings(intervals) == []
    assert_ledger_empty_and_sound(ledger)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_reservations_never_exceed_the_gpu_across_processes(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    """4 processes, 2 tasks each, share one 10 GB GPU with 2.5-4 GB each (28 GB asked in
    all at once): the reservations held at any moment never add up to more than 10 GB."""
    options = "--count 1 --memory 10000 --shared --tasks 2 --cycles 100 --hold 0.004 --mem"
    intervals = _run_cycles(
        spawn, [(backend, f"{options} {mem}") for mem in (2500, 3500, 4000, 4000)]
    )
    assert len(intervals) == 4 * 2 * 100
    assert not any(i.exclusive for i in intervals)
    [(memory, holders)] = peak_memory(intervals).values()
    assert memory <= 10000
    # The GPU really was shared (else the bound above says nothing): between
    # processes too, not only between the two tasks of one.
    assert holders >= 2
    assert _shared_between_processes(intervals)
    assert_ledger_empty_and_sound(ledger)


def _shared_between_processes(intervals: list[Interval]) -> bool:
    ordered = sorted(intervals, key=lambda i: i.start)
    for n, first in enumerate(ordered):
        for second in ordered[n + 1 :]:
            if second.start >= first.end:
                break
            if second.source != first.source:
                return True
    return False


# ------------------------------------------------------------ fairness


def _queue_in_order(
    spawn: Callable[..., Worker], ledger: Path, backend: str, priorities: list[int]
) -> tuple[Worker, list[Worker]]:
    """One process holds the only GPU; then one waiter per priority joins the queue, each
    started only once the one before it is queued (so their arrival order is known)."""
    holder = spawn("holder", backend, "hold", "--count", "1")
    holder.expect("granted")
    waiters = []
    for n, priority in enumerate(priorities):
        waiter = spawn(f"waiter{n}", backend, "once", "--count", "1", "--priority", str(priority))
        waiter.expect("ready")
        _wait_queued(ledger, waiter)
        waiters.append(waiter)
    return holder, waiters


def _grant_order(holder: Worker, waiters: list[Worker]) -> list[str]:
    holder.send("release")
    granted = {w.name: float(w.expect("granted")[0]) for w in waiters}
    for worker in [holder, *waiters]:
        worker.finish()
    return sorted(granted, key=granted.__getitem__)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_priorities_are_served_in_machine_wide_arrival_order(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    holder, waiters = _queue_in_order(spawn, ledger, backend, [0, 0, 0])
    assert _grant_order(holder, waiters) == ["waiter0", "waiter1", "waiter2"]
    intervals = [i for w in [holder, *waiters] for i in w.intervals()]
    assert len(intervals) == 4
    assert double_bookings(intervals) == []
    assert_ledger_empty_and_sound(ledger)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_later_higher_priority_waiter_goes_first(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    holder, waiters = _queue_in_order(spawn, ledger, backend, [0, 0, 5])
    assert _grant_order(holder, waiters) == ["waiter2", "waiter0", "waiter1"]
    assert_ledger_empty_and_sound(ledger)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_four_gpu_request_starts_while_three_processes_stream_one_gpu_work(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    """Three processes keep 6 one-GPU streams going over 4 GPUs (so some GPU is always
    busy); a 4-GPU request in a fourth process still gets all four, and the streams
    go on before and after it."""
    streams = [
        spawn(
            f"stream{n}",
            backend,
            "cycles",
            "--seed",
            str(n),
            "--count",
            "4",
            "--tasks",
            "2",
            "--cycles",
            "20",
            "--until-stop",
            "--hold",
            "0.01",
        )
        for n in range(3)
    ]
    for stream in streams:
        stream.expect("ready")
        stream.send("go")
    for stream in streams:
        _wait_until(f"{stream.name} streams", lambda s=stream: len(s.intervals()) >= 20)  # type: ignore[misc]
    big = spawn("big", backend, "once", "--count", "4", "--gpus", "4", "--hold", "0.02")
    big.expect("ready")
    granted = float(big.expect("granted")[0])
    big.expect("released")
    big.finish()
    [ended] = {i.end for i in big.intervals()}
    for stream in streams:
        _wait_until(
            f"{stream.name} goes on after the 4-GPU request",
            lambda s=stream: sum(i.start > ended for i in s.intervals()) >= 5,  # type: ignore[misc]
        )
        assert any(i.end < granted for i in stream.intervals())
        assert stream.process.poll() is None  # still streaming: nobody stopped to make room
    for stream in streams:
        stream.send("stop")
    for stream in streams:
        stream.finish()
    intervals = [i for w in [*streams, big] for i in w.intervals()]
    assert len(big.intervals()) == 4
    assert double_bookings(intervals) == []
    assert_ledger_empty_and_sound(ledger)


# ------------------------------------------------------------ wake-ups


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_release_in_one_process_is_handed_to_a_waiter_in_another(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    """The waiter's slow poll and its monitor's refresh are turned off (hours): only the
    releaser's wake-up can tell it that it was granted the GPU."""
    holder = spawn("holder", backend, "hold", "--count", "1")
    holder.expect("granted")
    waiter = spawn("waiter", backend, "once", "--count", "1", "--no-poll")
    waiter.expect("ready")
    _wait_queued(ledger, waiter)
    holder.send("release")
    holder.expect("released")
    waiter.expect("granted")
    for worker in (holder, waiter):
        worker.finish()
    assert double_bookings(holder.intervals() + waiter.intervals()) == []
    assert_ledger_empty_and_sound(ledger)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_wake_up_or_a_poll_a_grant_waits_in_the_ledger_for_one(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    """The control for the test above. The releaser sends no wake-up and the waiter
    neither polls nor refreshes: the grant is made in the ledger but does not reach the
    waiter; then one datagram (sent from here) alone delivers it."""
    holder = spawn("holder", backend, "hold", "--count", "1", "--no-wake")
    holder.expect("granted")
    waiter = spawn("waiter", backend, "once", "--count", "1", "--no-poll")
    waiter.expect("ready")
    _wait_queued(ledger, waiter)
    holder.send("release")
    holder.expect("released")
    holder.finish()
    state = _state(ledger)
    [row] = state.waiters.values()
    assert row.state == "granted"  # decided for it by the holder's process...
    assert waiter.nothing_for(1.0) == []  # ...and not delivered without a wake-up
    wakeup.wake(ledger, [row.member])
    waiter.expect("granted")
    waiter.finish()
    assert_ledger_empty_and_sound(ledger)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_wake_up_is_made_good_by_the_poll(
    spawn: Callable[..., Worker], ledger: Path, backend: str
) -> None:
    """The releaser sends no wake-up, and the waiter's monitor does not refresh: its
    listener's slow poll alone finds the grant. (The waiter queued while its listener
    slept with nobody waiting, so this also checks that a new waiter gives that sleep
    the poll's deadline.)"""
    holder = spawn("holder", backend, "hold", "--count", "1", "--no-wake")
    holder.expect("granted")
    waiter = spawn("waiter", backend, "once", "--count", "1", "--no-refresh")
    waiter.expect("ready")
    _wait_queued(ledger, waiter)
    holder.send("release")
    holder.expect("released")
    waiter.expect("granted")
    for worker in (holder, waiter):
        worker.finish()
    assert_ledger_empty_and_sound(ledger)
