"""The ledger's mutex: an ``flock`` on ``ledger.lock``, waited for in the kernel, for a bounded time.

``flock`` because the kernel drops it when its holder dies, however it dies:
a process killed inside a transaction blocks nobody. Two things make the
wait for it less simple than one call:

- A blocked ``flock()`` cannot be given a timeout (only a signal interrupts
  it, and a library cannot own the process's signals), yet a lock held by a
  stopped process (``kill -STOP``, a debugger) must not hang every pool on
  the machine.
- Sleeping between non-blocking tries bounds the wait but hands a free lock
  over late: with 8 processes contending, the sleeps took 97 s of 181 s and
  the machine made ~250 grants/s (docs/benchmarks.md, before this module).

So a free lock is one non-blocking ``flock``; a held one is waited for by a
thread of this lock's own, blocked in the kernel, which the caller waits for
with the timeout. The kernel wakes the thread the moment the lock is free.
If the caller gave up first, the thread unlocks as soon as it gets the lock,
so a late grant is never kept. The thread locks through a descriptor of its
own (a separate open file description): ``flock`` locks belong to the
description, and sharing the caller's would let a lock the caller took in
the meantime be dropped by the thread's late unlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
from pathlib import Path
from typing import final

from .._core.errors import LedgerError

__all__ = ["LedgerLock"]


@final
class _Wait:
    """One caller's wait, handed to the waiting thread."""

    __slots__ = ("abandoned", "done", "error", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.done = threading.Lock()
        self.done.acquire()  # released by the thread when the wait is over
        self.abandoned = False
        self.error: OSError | None = None


@final
class LedgerLock:
    """The lock of one ledger directory, as one process takes it."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None  # open between transactions: one flock call to lock
        self._held = False
        self._waits: queue.SimpleQueue[_Wait | None] | None = None
        self._waiter_pid: int | None = None
        self._mutex = threading.Lock()  # orders a caller's give-up against the thread's grant

    def acquire(self) -> None:
        """Take the lock, waiting at most ``timeout`` seconds; :class:`LedgerError` after.

        The file is checked to still be the one in the directory once it is
        locked, and the one in place is locked if it was replaced.
        """
        while True:
            fd = self._fd
            if fd is None:
                fd = self._fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fd = self._wait_in_kernel()
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held = True
                return
            self._fd = None
            os.close(fd)  # also unlocks the replaced file

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if self._held and self._fd is not None:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file and end the waiting thread (once it is idle)."""
        self.release()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        waits, self._waits = self._waits, None
        if waits is not None:
            waits.put(None)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _wait_in_kernel(self) -> int:
        """Wait for the lock in the thread, through a new descriptor; return it, locked."""
        wait = _Wait(self._open())
        self._thread_queue().put(wait)
        if not wait.done.acquire(timeout=self.timeout):
            with self._mutex:
                if wait.done.acquire(blocking=False):
                    pass  # granted just now: taken after all
                else:
                    wait.abandoned = True  # the thread unlocks and closes it when it gets it
                    raise LedgerError(
                        f"the ledger's lock {self.path} was held by another process for over "
                        f"{self.timeout:g} s (`fuser -v {self.path}` names it); a transaction "
                        "takes well under a millisecond"
                    )
        if wait.error is not None:
            os.close(wait.fd)
            raise LedgerError(f"cannot lock {self.path}: {wait.error}")
        # The locked descriptor is the lock file from now on.
        old, self._fd = self._fd, wait.fd
        if old is not None:
            os.close(old)
        return wait.fd

    def _thread_queue(self) -> queue.SimpleQueue[_Wait | None]:
        """The waiting thread's queue, started on first contention (again in a forked child)."""
        if self._waits is None or self._waiter_pid != os.getpid():
            self._mutex = threading.Lock()  # a fork may have copied it locked
            self._waits = queue.SimpleQueue()
            self._waiter_pid = os.getpid()
            threading.Thread(
                target=self._serve,
                args=(self._waits,),
                name=f"gpupool-ledger-lock {self.path.parent}",
                daemon=True,  # never holds up the interpreter's exit: nothing to clean up
            ).start()
        return self._waits

    def _serve(self, waits: queue.SimpleQueue[_Wait | None]) -> None:
        while (wait := waits.get()) is not None:
            try:
                fcntl.flock(wait.fd, fcntl.LOCK_EX)
            except OSError as error:
                wait.error = error
            with self._mutex:
                if not wait.abandoned:
                    wait.done.release()
                    continue
            with contextlib.suppress(OSError):
                os.close(wait.fd)  # a grant nobody waits for any more: unlocked by the close
