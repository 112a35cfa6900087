"""The ledger's mutex: an ``flock`` on ``ledger.lock``, taken without blocking, retried
with a growing pause, for a bounded time.

``flock`` because the kernel drops it when its holder dies, however it dies:
a process killed inside a transaction blocks nobody. Never a blocking
``flock()``: it cannot be given a timeout (only a signal interrupts it, and a
library cannot own the process's signals), and a lock held by a stopped
process (``kill -STOP``, a debugger) must not hang every pool on the machine.

A held lock is tried again after a pause that doubles from 50 us up to
:data:`MAX_PAUSE`. Waiting in the kernel instead (a thread blocked in
``flock`` for the caller, who waits for it with the timeout) was measured and
is slower: with 8 processes contending for 4 GPUs it made 588-814 grants/s,
a blocking ``flock`` in the caller 909-922, this back-off 988-1,117 with a
1 ms cap and more with longer ones (docs/benchmarks.md). The kernel hands
the lock to the next waiter in turn, so every transaction is by another
process, whose copy of the ledger is stale (``rows.load`` then reads the
changed tables, and the core is rebuilt) and whose wake-up preempts the
holder on a 2-core machine; a process that sleeps costs nothing, and the
one that runs does several transactions in a row with its state still
current. Fairness between requests does not come from the lock: the core
orders the machine's queue by priority and arrival, whoever runs it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import final

from .._core.errors import LedgerError

__all__ = ["MAX_PAUSE", "LedgerLock"]

#: The first pause before the lock is tried again (a transaction takes ~0.1 ms).
FIRST_PAUSE = 0.00005
#: The longest pause between tries. Longer pauses raised the machine's grant rate
#: under contention (1 ms: ~1,000/s, 4 ms: ~1,200/s, 8 ms: ~1,500/s, all noisy) but
#: delay a request that arrives while others queue for the lock by up to this much.
MAX_PAUSE = 0.004


@final
class LedgerLock:
    """The lock of one ledger directory, as one process takes it."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None  # open between transactions: one flock call to lock
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> None:
        """Take the lock, waiting at most ``timeout`` seconds; :class:`LedgerError` after.

        The file is checked to still be the one in the directory once it is
        locked, and the one in place is locked if it was replaced.
        """
        deadline = time.monotonic() + self.timeout
        pause = FIRST_PAUSE
        while True:
            fd = self._fd
            if fd is None:
                fd = self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerError(
                        f"the ledger's lock {self.path} was held by another process for over "
                        f"{self.timeout:g} s (`fuser -v {self.path}` names it); a transaction "
                        "takes well under a millisecond"
                    ) from None
                time.sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held = True
                return
            self._fd = None
            os.close(fd)  # also unlocks the replaced file

    def release(self) -> None:
        if self._held and self._fd is not None:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unlock and close the lock file."""
        self.release()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
