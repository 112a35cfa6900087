"""Who is in the ledger, and who is still alive: one kernel-held lock per member.

Every pool that joins the ledger is a *member*: it creates
``members/<id>.lock`` and holds an ``flock`` on it for as long as it lives.
The kernel drops that lock when the process dies, however it dies (``kill
-9``, the OOM killer, a crash), so "is member X alive?" is answered by trying
to take the same lock without blocking: no pid is trusted, so pid reuse and
other PID namespaces (a container sharing the directory) cannot fool it.

Two traps, both handled here. ``flock`` locks belong to the open file
description, which a ``fork()`` without ``exec`` shares with the child: a
forked worker would keep a dead parent "alive". So the descriptor is closed
in every forked child (:func:`os.register_at_fork`); the parent's own stays
open. And ``fcntl``/POSIX record locks are not used at all: they are dropped
when the process closes *any* descriptor of the file (SQLite's, for one).

Each member also binds ``members/<id>.sock``, a datagram socket that other
members send a byte to when they decide something for it (``wakeup.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import weakref
from collections.abc import Collection
from pathlib import Path
from typing import final

from .._core.errors import LedgerError

__all__ = [
    "MAX_SOCKET_PATH",
    "Liveness",
    "Membership",
    "is_alive",
    "lock_path",
    "members_dir",
    "socket_path",
]

#: The longest path an AF_UNIX socket can be bound to on Linux (108 bytes with the NUL).
MAX_SOCKET_PATH = 107

_live: weakref.WeakSet[Membership] = weakref.WeakSet()


def members_dir(ledger: Path) -> Path:
    return ledger / "members"


# Strings, not Paths: these are built for every member in every transaction, and
# pathlib's joins were 7% of the CPU of 8 contending processes (in a profile).
def lock_path(ledger: Path | str, member: str) -> str:
    return f"{os.fspath(ledger)}/members/{member}.lock"


def socket_path(ledger: Path | str, member: str) -> str:
    return f"{os.fspath(ledger)}/members/{member}.sock"


@final
class Membership:
    """This process's place in the ledger: a lock held until it leaves or dies, and a socket."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.id = secrets.token_hex(8)
        sock_file = socket_path(ledger, self.id)
        if len(os.fsencode(sock_file)) > MAX_SOCKET_PATH:
            raise LedgerError(
                f"the ledger directory {ledger} is too long a path for the sockets in it "
                f"({len(os.fsencode(sock_file))} bytes, at most {MAX_SOCKET_PATH}): use a "
                "shorter path (GPUPOOL_LEDGER or ledger=)"
            )
        # Locked under a temporary name and then renamed, so that a file under the final
        # name is locked from the moment it exists: nobody can see it unlocked and take
        # a member that is still joining for a dead one.
        draft = members_dir(ledger) / f".{self.id}.joining"
        try:
            fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise LedgerError(f"cannot join the ledger at {ledger}: {error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows the file
            os.fchmod(fd, 0o644)  # readable by every user: their liveness checks open it
            os.rename(draft, lock_path(ledger, self.id))
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.socket.setblocking(False)
            try:
                self.socket.bind(sock_file)
                # Any member may wake any other: a wake-up only makes it read the ledger.
                os.chmod(sock_file, 0o666)
            except OSError:
                self.socket.close()
                raise
        except OSError as error:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(draft)
            with contextlib.suppress(OSError):
                os.unlink(lock_path(ledger, self.id))
            raise LedgerError(f"cannot join the ledger at {ledger}: {error}") from None
        self._lock_fd: int | None = fd
        _live.add(self)

    @property
    def joined(self) -> bool:
        return self._lock_fd is not None

    def leave(self) -> None:
        """Give up the membership: remove the files, then drop the lock. Idempotent."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        _live.discard(self)
        for path in (socket_path(self.ledger, self.id), lock_path(self.ledger, self.id)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.socket.close()
        os.close(fd)

    def ensure(self) -> bool:
        """Make sure the lock file in the directory is still the one this process holds.

        A cleaner (systemd-logind's ``RemoveIPC``, a ``tmpfiles`` age limit, a user)
        may delete it, and then the others would take this member for dead: a
        new one is made, locked, and put in its place. Returns whether it had to.
        """
        fd = self._lock_fd
        if fd is None:
            return False
        path = lock_path(self.ledger, self.id)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            pass
        draft = members_dir(self.ledger) / f".{self.id}.joining"
        try:
            new = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(new, 0o644)
            os.rename(draft, path)
        except OSError:
            return False  # the directory is gone too: the next transaction says so
        self._lock_fd = new
        os.close(fd)
        return True

    def drain(self) -> int:
        """Read every pending wake-up; return how many there were."""
        count = 0
        while True:
            try:
                self.socket.recv(64)
            except (BlockingIOError, OSError):
                return count
            count += 1

    def _forget_in_child(self) -> None:
        # The child of a fork must not keep this process's lock alive (see the module's
        # docstring): it closes its copies; the parent keeps its own.
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self.socket.close()


def _after_fork_in_child() -> None:
    for membership in list(_live):
        membership._forget_in_child()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def is_alive(ledger: Path, member: str) -> bool:
    """Whether member ``member`` still holds its lock (its process lives).

    A lock file that cannot be opened for lack of permission counts as alive:
    only a live process could have made it unreadable, and freeing a live
    member's GPUs would double-book them.
    """
    alive, fd = _check(lock_path(ledger, member))
    if fd is not None:
        os.close(fd)
    return alive


def _check(path: str) -> tuple[bool, int | None]:
    """Whether the lock file at ``path`` is held, and a descriptor of it if it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except OSError:
        return True, None  # unreadable: see is_alive
    if _locked(fd):
        return True, fd
    os.close(fd)
    return False, None


def _locked(fd: int) -> bool:
    """Whether another process holds the file's lock (a shared lock taken here is dropped)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


@final
class Liveness:
    """:func:`is_alive` for one process's transactions, with the lock files it found
    held kept open: asking again is then one ``flock`` call, not an open, a lock
    and a close. Every submit asks about every other member: for 7 of them,
    11.5 us instead of 31."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self._open: dict[str, int] = {}  # by member id

    def is_alive(self, member: str) -> bool:
        fd = self._open.pop(member, None)
        if fd is not None:
            if _locked(fd):
                # Only its member holds this file's lock for longer than an instant
                # (checks like this one share it), so the file is still held.
                self._open[member] = fd
                return True
            # Free: the member died, or replaced a deleted file with a new one under
            # the same name (Membership.ensure). Look at the file there now.
            os.close(fd)
        alive, fd = _check(lock_path(self.ledger, member))
        if fd is not None:
            self._open[member] = fd
        return alive

    def keep_only(self, members: Collection[str]) -> None:
        """Close the files of members no longer in the ledger."""
        for member in [m for m in self._open if m not in members]:
            os.close(self._open.pop(member))

    def close(self) -> None:
        self.keep_only(())


def remove_files(ledger: Path, member: str) -> None:
    """Remove a dead member's files, where this user may (the directory is sticky)."""
    for path in (socket_path(ledger, member), lock_path(ledger, member)):
        with contextlib.suppress(OSError):
            os.unlink(path)


def remove_orphans(ledger: Path, known: Collection[str]) -> int:
    """Remove the files of dead members the ledger has no row of; how many there were.

    A process killed between joining (its lock file renamed into place) and its
    first write to the ledger leaves files that no row names, so the sweep of
    dead members' rows never reaches them. A member that is still joining holds
    its lock, so it is alive here and keeps its files.
    """
    removed = 0
    try:
        names = os.listdir(members_dir(ledger))
    except OSError:
        return removed
    for name in names:
        if not name.endswith(".lock") or name.startswith("."):
            continue
        member = name[: -len(".lock")]
        if member not in known and not is_alive(ledger, member):
            remove_files(ledger, member)
            removed += 1
    return removed


def live_members(ledger: Path) -> set[str]:
    """The ids of the members whose lock files are held now (a scan of the directory)."""
    found: set[str] = set()
    try:
        names = os.listdir(members_dir(ledger))
    except OSError:
        return found
    for name in names:
        if name.endswith(".lock") and not name.startswith("."):
            member = name[: -len(".lock")]
            if is_alive(ledger, member):
                found.add(member)
    return found
