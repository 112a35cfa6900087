"""Wake-ups between processes: one datagram to the member's socket.

A member that decides something for another (a grant, a failure) sends a
byte to that member's socket in the ledger directory; the receiver wakes in
its event loop, reads its decisions from the ledger and hands them to its
waiters. No polling loop is needed for a prompt hand-over; the waiter's
slow poll (``MachineCore.POLL_INTERVAL``) only bounds how long a lost
wake-up, or a dead member nobody has noticed yet, can delay it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from .members import socket_path

__all__ = ["wake", "wake_all"]

_sender: socket.socket | None = None


def _socket() -> socket.socket:
    global _sender
    if _sender is None:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        _sender = sender
    return _sender


def _close_sender() -> None:
    global _sender
    sender, _sender = _sender, None
    if sender is not None:
        sender.close()


atexit.register(_close_sender)


def _forget_sender() -> None:
    global _sender
    _sender = None  # the child makes its own; the parent's stays the parent's


os.register_at_fork(after_in_child=_forget_sender)


def wake(ledger: Path, members: Iterable[str]) -> None:
    """Send each of ``members`` a wake-up; never blocks and never fails.

    A member that is gone (no socket, nobody reading) is skipped; one whose
    queue is full has wake-ups pending already, which is all it needs.
    """
    sender = _socket()
    for member in members:
        with contextlib.suppress(OSError):
            sender.sendto(b"!", socket_path(ledger, member))


def wake_all(ledger: Path) -> None:
    """Wake every member with a socket in the directory (after the ledger was rebuilt)."""
    try:
        names = os.listdir(ledger / "members")
    except OSError:
        return
    wake(ledger, [n[: -len(".sock")] for n in names if n.endswith(".sock")])
