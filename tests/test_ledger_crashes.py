"""The machine-wide ledger when its members die or its file is damaged.

Real processes, real ``kill -9``, real files. Each victim is a real process (tests/scripts/ledger_crash_worker.py) running a
pool on fake GPUs, whose UUIDs are the same in every process, so that every
process given the same ledger directory shares the same GPUs. The test's own
process watches through a pool of its own, or through the ledger's tables.

The times a GPU took to come free after a kill are printed (run with ``-s``
to see them, lines starting ``[ledger kills]``); the tests assert only a
generous bound, so they cannot flake on a loaded machine. The ledger's
target is 2 s. Nobody is told of a death: the waiting pool finds it in its
next poll (``POLL_INTERVAL``, 0.5 s), so the figures are about one interval
when the kill comes just after the waiter queued (the worst case), and less
when it comes later.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import attrs
import pytest

from gpupool import FakeGPUProvider, GPUAllocation, GPUResourcePool, PoolTimeout
from gpupool._core.errors import LedgerError  # not exported as gpupool.LedgerError yet
from gpupool._ledger.members import lock_path, socket_path
from gpupool._ledger.rows import HoldRow, LedgerState, WaiterRow
from gpupool._ledger.store import REBUILD_GRACE, LedgerStore
from gpupool._system import procfs
from gpupool.providers.fake import fake_uuid

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scripts" / "ledger_crash_worker.py"
BACKENDS = ("asyncio", "trio")
#: What a test waits for at most before it fails: far above every figure it measures.
BOUND = 10.0
#: A forged member's id (ids are 16 hex digits; this one is obviously not random).
FORGED = "f0f0f0f0f0f0f0f0"

T = TypeVar("T")


# ------------------------------------------------------------ helpers


class Worker:
    """One worker process and the lines it printed."""

    def __init__(
        self,
        ledger: Path,
        backend: str,
        gpus: int,
        *options: str,
        log: Path,
        prefix: Sequence[str] = (),
    ) -> None:
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, str(WORKER), str(ledger), backend, str(gpus), *options],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._buffer = b""

    def send(self, *words: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((" ".join(str(w) for w in words) + "\n").encode())
        self.process.stdin.flush()

    def expect(self, word: str, name: str | None = None, *, timeout: float = 30.0) -> list[str]:
        """The words of the next line that starts with ``word`` (and ``name``)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                words = line.split()
                if words[:1] == [word] and (name is None or words[1:2] == [name]):
                    return words
                if words[:1] in (["error"], ["open-error"]) and word not in words[:1]:
                    raise AssertionError(f"worker {self.pid}: {line}\n{self.stderr()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"worker {self.pid} said no {word!r} {name or ''} within {timeout} s; "
                    f"it said {self.lines}\n{self.stderr()}"
                )
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.process.wait()
                    raise AssertionError(
                        f"worker {self.pid} exited ({code}) before saying {word!r}; it said "
                        f"{self.lines}\n{self.stderr()}"
                    )
                self._buffer += chunk

    def granted(self, name: str, gpus: int = 1, timeout: float | None = None) -> tuple[str, ...]:
        """Acquire ``gpus`` GPUs as ``name`` and wait for the grant: the UUIDs granted."""
        self.send("acquire", name, gpus, *([] if timeout is None else [timeout]))
        return tuple(self.expect("granted", name)[3].split(","))

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``, reap it, and read what it printed before it died."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.process.wait(timeout=BOUND) == -signal.SIGKILL
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            self._buffer += chunk
        self.lines += self._buffer.decode().splitlines()
        self._buffer = b""
        self._close_pipes()

    def stop(self) -> None:
        """Ask it to exit, or kill it if it will not; never raises."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("exit")
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def ledger() -> Iterator[Path]:
    """A ledger directory with a short path (a member's socket path must fit in 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="gpl-", dir="/tmp"))
    os.chmod(base, 0o755)  # the two-uid test's second user must reach the ledger
    yield base / "ledger"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start workers; whatever is left of them (and of their jobs) is ended afterwards."""
    workers: list[Worker] = []

    def start(ledger: Path, backend: str, gpus: int, *options: str, **kwargs: object) -> Worker:
        log = tmp_path / f"worker-{len(workers)}.err"
        worker = Worker(ledger, backend, gpus, *options, log=log, **kwargs)  # type: ignore[arg-type]
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
        for line in worker.lines:
            if line.startswith("job "):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(line.split()[2]), signal.SIGKILL)


def state_of(ledger: Path) -> LedgerState:
    store = LedgerStore(ledger)
    try:
        return store.read()
    finally:
        store.close_connection()


def holders(ledger: Path) -> dict[str, str]:
    """GPU UUID -> the member holding it, from the ledger's holds table."""
    return {uuid: hold.member for hold in state_of(ledger).holds.values() for uuid in hold.gpus}


def wait_until(what: Callable[[], T], *, timeout: float = BOUND, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {message}")
        time.sleep(0.01)


async def await_until(what: Callable[[], T], *, timeout: float = BOUND, message: str = "") -> T:
    with anyio.fail_after(timeout):
        while not (value := what()):  # noqa: ASYNC110 -- the ledger is a file, not an event
            await anyio.sleep(0.01)
        return value


def is_queued(ledger: Path, member: str, count: int = 1) -> bool:
    """Whether ``member`` has ``count`` requests waiting in the machine-wide queue."""
    waiters = state_of(ledger).waiters.values()
    return sum(w.member == member and w.state == "waiting" for w in waiters) >= count


def process_gone(pid: int) -> bool:
    info = procfs.read_stat(pid)
    return info is None or not info.alive


def shows(label: str, seconds: float) -> None:
    print(f"\n[ledger kills] {label}: {seconds * 1000:.0f} ms")


class Timed:
    """An acquire of the test's own pool run in the background, with the time it returned."""

    def __init__(self) -> None:
        self.allocation: GPUAllocation | None = None
        self.at: float | None = None
        self.done = anyio.Event()

    async def run(self, pool: GPUResourcePool, gpus: int) -> None:
        self.allocation = await pool.acquire(gpus)
        self.at = time.monotonic()
        self.done.set()

    async def result(self) -> tuple[GPUAllocation, float]:
        """The allocation and when it came, waiting for it at most :data:`BOUND` seconds."""
        with anyio.fail_after(BOUND):
            await self.done.wait()
        assert self.allocation is not None
        assert self.at is not None
        return self.allocation, self.at


def member_files_gone(ledger: Path, member: str) -> bool:
    return not any(
        os.path.exists(p) for p in (lock_path(ledger, member), socket_path(ledger, member))
    )


def fake_pool(ledger: Path, gpus: int) -> GPUResourcePool:
    return GPUResourcePool(FakeGPUProvider(count=gpus), ledger=ledger)


# ------------------------------------------------------------ kill -9 of a holder


@pytest.mark.anyio
async def test_kill_9_of_a_holder_frees_its_gpu_for_a_waiting_process(
    ledger: Path, spawn: Callable[..., Worker], anyio_backend: str
) -> None:
    """Three rounds: a holder that another process (this one) waits behind is killed."""
    backend = anyio_backend
    async with fake_pool(ledger, 1) as pool:
        me = pool._core.member_id  # type: ignore[union-attr]
        for round_ in range(3):
            holder = spawn(ledger, backend, 1)
            member = holder.expect("ready")[2]
            assert await anyio.to_thread.run_sync(holder.granted, "a") == (fake_uuid(0),)
            with pytest.raises(PoolTimeout):  # held in another process: not granted here
                await pool.acquire(1, timeout=0.3)
            waiter = Timed()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(waiter.run, pool, 1)
                await await_until(lambda: is_queued(ledger, me))
                killed = time.monotonic()
                holder.kill()
                allocation, at = await waiter.result()
            shows(
                f"holder killed -> GPU granted elsewhere ({backend}, round {round_})", at - killed
            )
            state = state_of(ledger)
            assert member not in state.members
            assert [h.member for h in state.holds.values()] == [me]
            assert member_files_gone(ledger, member)
            await pool.release(allocation)


# ------------------------------------------------------------ kill -9 of a waiter


@pytest.mark.anyio
async def test_kill_9_of_the_head_of_the_queue_lets_the_others_go_on(
    ledger: Path, spawn: Callable[..., Worker], anyio_backend: str
) -> None:
    """The head waits for both GPUs (one is held), so the 1-GPU requests behind it wait too."""
    backend = anyio_backend
    holder = spawn(ledger, backend, 2)
    holder.expect("ready")
    (held,) = holder.granted("a")
    head = spawn(ledger, backend, 2)
    member = head.expect("ready")[2]
    head.send("acquire", "big", 2)
    wait_until(lambda: is_queued(ledger, member), message="the 2-GPU request queues")
    async with fake_pool(ledger, 2) as pool:
        me = pool._core.member_id  # type: ignore[union-attr]
        first, second = Timed(), Timed()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first.run, pool, 1)
            await await_until(lambda: is_queued(ledger, me))
            tasks.start_soon(second.run, pool, 1)
            await await_until(lambda: is_queued(ledger, me, 2))
            await anyio.sleep(1.0)  # two polls: the head keeps the free GPU for itself
            assert not first.done.is_set()
            assert not second.done.is_set()
            killed = time.monotonic()
            head.kill()
            one, at = await first.result()
            shows(f"head waiter killed -> the next one granted ({backend})", at - killed)
            assert one.gpu_uuids != (held,)
            assert not second.done.is_set()  # its GPU is still held
            holder.send("release", "a")
            two, _ = await second.result()
        assert two.gpu_uuids == (held,)
        state = state_of(ledger)
        assert member not in state.members
        assert not any(w.member == member for w in state.waiters.values())
        await pool.release(one)
        await pool.release(two)


# ------------------------------------------------------------ kill -9 at random points


def holds_ledger_lock(pid: int, ledger: Path) -> bool:
    """Whether process ``pid`` holds the ledger's flock, i.e. is inside a transaction."""
    inode = os.stat(ledger / "ledger.lock").st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        # "1: FLOCK  ADVISORY  WRITE PID MAJOR:MINOR:INODE 0 EOF"
        fields = line.split()
        if (
            fields[1:2] == ["FLOCK"]
            and fields[4:6]
            and fields[4] == str(pid)
            and (fields[5].rsplit(":", 1)[-1] == str(inode))
        ):
            return True
    return False


HOLD_LOCK = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # a process stopped inside a transaction
"""


@contextlib.contextmanager
def stopped_holder_of_the_lock(ledger: Path) -> Iterator[int]:
    """A process that took the ledger's lock and stopped; yields its pid, killed after."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(ledger / "ledger.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        wait_until(lambda: holds_ledger_lock(holder.pid, ledger))
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@pytest.mark.anyio
async def test_a_lock_held_by_a_stopped_process_fails_the_call_clearly_never_hangs(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process stopped (``kill -STOP``) while it holds the ledger's lock: each call
    fails with LedgerError after the lock's timeout, naming the lock; once that
    process is gone, the pool works again, with nothing lost."""
    monkeypatch.setattr("gpupool._ledger.store.LOCK_TIMEOUT", 0.5)
    async with fake_pool(ledger, 2) as pool:
        kept = await pool.acquire(1)
        with stopped_holder_of_the_lock(ledger):
            for call in (lambda: pool.acquire(1), lambda: pool.release(kept)):
                started = time.monotonic()
                with pytest.raises(LedgerError, match=r"ledger\.lock was held by another process"):
                    with anyio.fail_after(BOUND):
                        await call()
                assert time.monotonic() - started >= 0.5
        # The failed release left the allocation held; both calls now go through.
        other = await pool.acquire(1)
        await pool.release(kept)
        await pool.release(other)
        assert state_of(ledger).holds == {}


@pytest.mark.timeout(300)
def test_kill_9_at_random_points_leaves_nothing_held_and_the_file_sound(
    ledger: Path, spawn: Callable[..., Worker]
) -> None:
    """Cycling victims are killed (and restarted) 60 times, beside a survivor that cycles on.

    Each victim runs three tasks that acquire and release (1 or 2 of 3 GPUs,
    some shared, some with short timeouts) as fast as they can, so at any
    moment it is likely inside a ledger transaction, waiting, or holding. A
    kill stops the victim first (SIGSTOP) to see in ``/proc/locks`` whether it
    holds the ledger's lock at that instant, then SIGKILLs it there. The
    victims alternate between the two anyio backends. The survivor frees what
    the dead held while they die; the last two die after it left, so a new
    process must free what they held itself before it gets every GPU.
    """
    seed = random.randrange(2**32)
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    gpus, kills_wanted = 3, 60
    survivor = spawn(ledger, "trio", gpus, "--cycle", "2", "--pause", "0.005")
    survivor.expect("ready")
    victims = [spawn(ledger, BACKENDS[i], gpus, "--cycle", "3") for i in range(2)]
    kills = in_transaction = before_ready = 0
    dead_members: set[str] = set()

    def kill(victim: Worker) -> None:
        nonlocal kills, in_transaction, before_ready
        if rng.random() < 0.8:
            victim.expect("ready")
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(victim.pid, signal.SIGSTOP)
        in_transaction += holds_ledger_lock(victim.pid, ledger)
        victim.kill()
        kills += 1
        ready = [line.split()[2] for line in victim.lines if line.startswith("ready")]
        dead_members.update(ready)
        before_ready += not ready

    while kills < kills_wanted - 2:
        slot = kills % 2
        kill(victims[slot])
        victims[slot] = spawn(ledger, BACKENDS[kills % 2], gpus, "--cycle", "3")
    count = int(survivor.expect("cycled")[1])
    assert int(survivor.expect("cycled")[1]) > count  # it goes on after all of that
    survivor.stop()
    assert survivor.process.returncode == 0, survivor.stderr()
    for victim in victims:
        kill(victim)
    print(
        f"[ledger kills] {kills} kills with SIGKILL, {in_transaction} of them inside a ledger "
        f"transaction (holding its lock), {before_ready} before the pool was open"
    )

    async def take_every_gpu() -> tuple[float, LedgerState, str]:
        async with fake_pool(ledger, gpus) as pool:
            started = time.monotonic()
            allocation = await pool.acquire(gpus, timeout=BOUND)
            took = time.monotonic() - started
            during = state_of(ledger)
            await pool.release(allocation)
            return took, during, pool._core.member_id  # type: ignore[union-attr]

    took, during, me = anyio.run(take_every_gpu)
    shows(f"all {gpus} GPUs granted to a new process after the kills", took)
    assert set(during.members) == {me}
    assert {h.member for h in during.holds.values()} == {me}
    assert not during.waiters
    final = state_of(ledger)
    assert not final.members
    assert not final.holds
    assert not final.waiters
    assert not dead_members & set(final.members)
    with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # No kill damaged the file (it was never rebuilt) and no member's files were left.
    assert not (ledger / "ledger.db.damaged").exists()
    names = os.listdir(ledger / "members")
    assert sorted(n for n in names if not n.startswith(".")) == []
    # A kill between creating a member's lock file and renaming it into place leaves
    # the draft (".ID.joining"): never read, as nobody can know it is a member's.
    print(f"[ledger kills] {sum(n.endswith('.joining') for n in names)} drafts of joins left")


JOIN_AND_WAIT = """
import sys
from pathlib import Path
from gpupool._ledger.members import Membership
member = Membership(Path(sys.argv[1]))  # joined: its files exist, no ledger row yet
print(member.id, flush=True)
sys.stdin.read()
"""


def test_a_member_killed_before_its_first_write_leaves_no_files(ledger: Path) -> None:
    # Killed between taking its lock file and writing its row: no row names its files,
    # so only a sweep of the directory finds them. A member still joining (alive, no
    # row yet either) keeps its files.
    def join() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-c", JOIN_AND_WAIT, str(ledger)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        return process, process.stdout.readline().strip()

    async def open_a_pool() -> None:
        async with fake_pool(ledger, 2):
            pass

    anyio.run(open_a_pool)  # the ledger's directory, as a pool makes it
    dead, dead_id = join()
    joining, joining_id = join()
    try:
        dead.kill()
        dead.communicate()
        assert os.path.exists(lock_path(ledger, dead_id))
        anyio.run(open_a_pool)
        assert not os.path.exists(lock_path(ledger, dead_id))
        assert not os.path.exists(socket_path(ledger, dead_id))
        assert os.path.exists(lock_path(ledger, joining_id))
        assert os.path.exists(socket_path(ledger, joining_id))
    finally:
        for process in (dead, joining):
            process.kill()
            process.communicate()


# ------------------------------------------------------------ jobs that outlive their holder


@pytest.mark.anyio
async def test_kill_9_of_a_holder_kills_its_leftover_job_before_the_gpu_is_granted(
    ledger: Path, spawn: Callable[..., Worker], anyio_backend: str
) -> None:
    """A ``run_process`` job (its own session) outlives its holder: it is killed, then freed.

    The waiter's first poll kills the job's process group and flags the hold
    orphaned; that poll (if the job is gone by the end of it) or the next
    frees the GPU.
    """
    backend = anyio_backend
    holder = spawn(ledger, backend, 1)
    member = holder.expect("ready")[2]
    holder.granted("a")
    holder.send("job", "a")
    job = int(holder.expect("job", "a")[2])
    wait_until(
        lambda: any(job in [pid for pid, _ in h.jobs] for h in state_of(ledger).holds.values()),
        message="the job is recorded with its hold",
    )
    assert os.getpgid(job) == job  # run_process made it a process group leader
    async with fake_pool(ledger, 1) as pool:
        waiter = Timed()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(waiter.run, pool, 1)
            await anyio.sleep(0.2)
            killed = time.monotonic()
            holder.kill()
            assert not process_gone(job)  # the job outlives its holder ...
            allocation, at = await waiter.result()
            # ... until the waiter's process frees the GPU: killed first, then re-granted.
            assert process_gone(job)
        shows(f"holder with a job killed -> job killed, GPU granted ({backend})", at - killed)
        state = state_of(ledger)
        assert member not in state.members
        assert not any(h.orphaned or h.member == member for h in state.holds.values())
        await pool.release(allocation)


# ------------------------------------------------------------ pids are never trusted


def forge(ledger: Path, pid: int, *, waiter: bool) -> None:
    """A member ``FORGED`` with process ``pid``, holding GPU 0 (and waiting for 2 GPUs)."""

    def change(state: LedgerState) -> None:
        me = next(iter(state.members.values()))
        state.members[FORGED] = attrs.evolve(me, id=FORGED, pid=pid, command="forged")
        hold = state.take_id()
        state.holds[hold] = HoldRow(
            hold, FORGED, None, (fake_uuid(0),), 0, True, 0, None, None, time.monotonic(),
            time.time(), (), "allocation", None, False,
        )  # fmt: skip
        if waiter:
            ticket = state.take_id()
            state.waiters[ticket] = WaiterRow(
                ticket, FORGED, 2, 0, True, 0, (fake_uuid(0), fake_uuid(1)), None, None,
                time.monotonic(), time.time(), None, None, None, "waiting", None, None,
            )  # fmt: skip

    store = LedgerStore(ledger)
    try:
        store.write(change)
    finally:
        store.close_connection()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_live_pid_whose_lock_is_free_is_a_dead_member(
    ledger: Path, spawn: Callable[..., Worker], backend: str
) -> None:
    """A recycled pid: the member's process is gone and its pid belongs to another (this test)."""
    worker = spawn(ledger, backend, 2)
    worker.expect("ready")
    forge(ledger, os.getpid(), waiter=True)
    Path(lock_path(ledger, FORGED)).touch()  # its lock file is there, but nobody holds it
    assert holders(ledger)[fake_uuid(0)] == FORGED
    worker.send("acquire", "x", 1, BOUND, "0")
    assert worker.expect("granted", "x")[3] == fake_uuid(0)
    state = state_of(ledger)
    assert FORGED not in state.members
    assert not any(h.member == FORGED for h in state.holds.values())
    assert not any(w.member == FORGED for w in state.waiters.values())
    assert not os.path.exists(lock_path(ledger, FORGED))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_pid_whose_lock_is_held_is_a_live_member(
    ledger: Path, spawn: Callable[..., Worker], backend: str
) -> None:
    """A member in another PID namespace: its pid means nothing here, its lock is what counts."""
    worker = spawn(ledger, backend, 2)
    worker.expect("ready")
    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(gone.pid, 0)
    forge(ledger, gone.pid, waiter=False)
    fd = os.open(lock_path(ledger, FORGED), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        worker.send("acquire", "y", 1, 1.5, "0")  # three polls and a submit, all find it alive
        worker.expect("timeout", "y")
        assert holders(ledger)[fake_uuid(0)] == FORGED
        assert FORGED in state_of(ledger).members
    finally:
        os.close(fd)  # ... and now it dies
    worker.send("acquire", "z", 1, BOUND, "0")
    assert worker.expect("granted", "z")[3] == fake_uuid(0)
    assert FORGED not in state_of(ledger).members


# ------------------------------------------------------------ another PID namespace


def can_unshare(*flags: str) -> str | None:
    """Why ``unshare FLAGS true`` cannot run here, or ``None`` if it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    result = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"unshare {' '.join(flags)} is refused here: {result.stderr.strip()}"
    return None


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.anyio
async def test_a_holder_in_another_pid_namespace(
    ledger: Path, spawn: Callable[..., Worker], anyio_backend: str
) -> None:
    """A container-like holder (``unshare --pid``) is pid 1 there: alive by its lock alone."""
    flags = ("--pid", "--fork", "--mount-proc")
    reason = can_unshare(*flags)
    if reason is not None:
        pytest.skip(reason)
    holder = spawn(ledger, anyio_backend, 1, prefix=("unshare", *flags))
    _, pid_inside, member = holder.expect("ready")
    assert pid_inside == "1"  # the first process of its own PID namespace
    (inner,) = children_of(holder.pid)  # the same process, as this namespace numbers it
    holder.granted("a")
    row = state_of(ledger).members[member]
    assert row.pid == 1
    assert row.pid_namespace != os.readlink("/proc/self/ns/pid")
    async with fake_pool(ledger, 1) as pool:
        with pytest.raises(PoolTimeout):  # alive by its lock, whatever pid 1 is here
            await pool.acquire(1, timeout=1.5)
        waiter = Timed()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(waiter.run, pool, 1)
            await anyio.sleep(0.2)
            killed = time.monotonic()
            os.kill(inner, signal.SIGKILL)  # the namespace's init: the kernel ends it all
            allocation, at = await waiter.result()
        shows(f"holder in another PID namespace killed -> GPU granted ({anyio_backend})",
              at - killed)  # fmt: skip
        assert holder.process.wait(timeout=BOUND) != 0
        assert member not in state_of(ledger).members
        await pool.release(allocation)


# ------------------------------------------------------------ a damaged ledger file


def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "wiped":  # with SQLite's files beside it: nothing tells it was in use
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            (path.parent / name).unlink()
    elif how == "emptied":
        os.truncate(path, 0)
    elif how == "halved":
        # Checkpointed first, so that the file (not SQLite's WAL beside it) holds the state:
        # else the cut goes unseen until a checkpoint brings it to light.
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        os.truncate(path, path.stat().st_size // 2)
    elif how == "garbage":
        size = path.stat().st_size
        with open(path, "r+b") as file:  # in place: every pool's connection reads it
            file.write(random.Random(how).randbytes(size))
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    ("how", "finder"),
    [
        ("deleted", "newcomer"),
        ("emptied", "newcomer"),
        ("halved", "newcomer"),
        ("garbage", "newcomer"),
        ("deleted", "member"),
        ("wiped", "newcomer"),
    ],
)
def test_a_damaged_ledger_is_rebuilt_from_the_live_holders(
    ledger: Path,
    spawn: Callable[..., Worker],
    caplog: pytest.LogCaptureFixture,
    how: str,
    finder: str,
) -> None:
    """Two holders (asyncio and trio) keep their GPUs; a third process never gets one of them.

    The damage is found by the next process that opens the file (a
    ``newcomer``: pools that have it open may not see a file damaged in place,
    as SQLite serves them from its WAL and their page cache), or by the third
    process, a ``member`` already, in its next transaction.
    """
    first = spawn(ledger, "asyncio", 2)
    first_id = first.expect("ready")[2]
    (gpu_a,) = first.granted("a")
    second = spawn(ledger, "trio", 2)
    second_id = second.expect("ready")[2]
    (gpu_b,) = second.granted("b")
    backend = BACKENDS[len(how) % 2]
    if finder == "member":
        other = spawn(ledger, backend, 2)
        other.expect("ready")
    assert holders(ledger) == {gpu_a: first_id, gpu_b: second_id}

    damage(ledger / "ledger.db", how)
    if finder == "newcomer":
        other = spawn(ledger, backend, 2)
        other.expect("ready", timeout=60)
    # Nothing is granted until the holders have written themselves back, nor after.
    other.send("acquire", "c", 1, REBUILD_GRACE + 1.5)
    other.expect("timeout", "c", timeout=60)
    assert wait_until(lambda: holders(ledger) == {gpu_a: first_id, gpu_b: second_id})
    other.send("acquire", "d", 1, 1.0)
    other.expect("timeout", "d")

    # Every pool goes on.
    first.send("release", "a")
    first.expect("released", "a")
    assert other.granted("e") == (gpu_a,)
    second.send("release", "b")
    second.expect("released", "b")
    assert first.granted("f") == (gpu_b,)
    for worker in (first, second, other):
        worker.stop()
        assert worker.process.returncode == 0, worker.stderr()
    warnings = [
        line
        for worker in (first, second, other)
        for line in worker.stderr().splitlines()
        if "damaged" in line
    ]
    # A wiped ledger looks like none at all: made afresh, and the holders are woken all
    # the same (which is what keeps their GPUs theirs), but there may be nothing to say.
    assert len(warnings) == 1 or (how == "wiped" and not warnings), warnings
    assert not caplog.records  # found by the pools, not by this test's reads
    print(f"\n[ledger kills] {how}, found by a {finder}: {warnings or 'no warning'}")
    with contextlib.closing(sqlite3.connect(ledger / "ledger.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ------------------------------------------------------------ places the ledger refuses


def test_a_read_only_ledger_directory_is_refused(
    tmp_path: Path, spawn: Callable[..., Worker]
) -> None:
    """A real read-only mount (a tmpfs remounted ``ro``, in a mount namespace of its own)."""
    flags = ("--mount", "--propagation", "private")
    reason = can_unshare(*flags)
    if reason is not None:
        pytest.skip(reason)
    mount = tmp_path / "ro"
    mount.mkdir()
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$0" && mkdir -m 1777 "$0/ledger" "$0/ledger/members" '
        '&& mount -o remount,ro "$0" && exec "$@"'
    )
    worker = spawn(
        mount / "ledger", "asyncio", 1, prefix=("unshare", *flags, "sh", "-c", script, mount)
    )
    message = " ".join(worker.expect("open-error")[1:])
    assert worker.process.wait(timeout=BOUND) == 3
    assert message.startswith(f"{LedgerError.__name__}:")
    assert "read-only" in message
    assert str(mount / "ledger") in message


# ------------------------------------------------------------ two users


NOBODY = 65534


def test_two_users_share_one_ledger(ledger: Path, spawn: Callable[..., Worker]) -> None:
    """root (asyncio) and nobody (trio) share a ledger root created; each frees the other's GPU."""
    if os.geteuid() != 0:
        pytest.skip("starting a process as another user needs root")
    rooted = spawn(ledger, "asyncio", 2)
    root_id = rooted.expect("ready")[2]
    for directory in (ledger, ledger / "members"):
        assert directory.stat().st_mode & 0o7777 == 0o1777
    (root_gpu,) = rooted.granted("r")
    nobody = spawn(ledger, "trio", 2, "--uid", str(NOBODY))
    nobody_id = nobody.expect("ready")[2]
    assert os.stat(lock_path(ledger, nobody_id)).st_uid == NOBODY
    (nobody_gpu,) = nobody.granted("n")
    assert nobody_gpu != root_gpu  # no double-booking, either way
    nobody.send("acquire", "n2", 1, 1.0)
    nobody.expect("timeout", "n2")
    rooted.send("acquire", "r2", 1, 1.0)
    rooted.expect("timeout", "r2")
    assert holders(ledger) == {root_gpu: root_id, nobody_gpu: nobody_id}

    # nobody finds root's member dead (it can read root's lock file) and takes its GPU.
    nobody.send("acquire", "n3", 1)
    wait_until(lambda: is_queued(ledger, nobody_id))
    killed = time.monotonic()
    rooted.kill()
    _, _, at, uuids = nobody.expect("granted", "n3")
    shows("root's holder killed -> GPU granted to nobody's process", float(at) - killed)
    assert uuids == root_gpu
    # ... and root's next process finds nobody's dead and takes both.
    again = spawn(ledger, "asyncio", 2)
    again_id = again.expect("ready")[2]
    again.send("acquire", "r3", 2)
    wait_until(lambda: is_queued(ledger, again_id))
    killed = time.monotonic()
    nobody.kill()
    _, _, at, uuids = again.expect("granted", "r3")
    shows("nobody's holder killed -> GPUs granted to root's process", float(at) - killed)
    assert sorted(uuids.split(",")) == sorted([root_gpu, nobody_gpu])
    assert set(state_of(ledger).members) == {again_id}
    # nobody may not remove root's files from the sticky members/ (it tries): they stay.
    stale = sorted(n for n in os.listdir(ledger / "members") if again_id not in n)
    print(f"[ledger kills] files of dead members left in members/: {stale}")
