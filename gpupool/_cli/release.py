"""``gpupool release ID``: end a reservation made with ``gpupool reserve``.

The reservation is the hold ``ID`` of the ledger (the id ``gpupool reserve``
printed and ``gpupool status`` lists). Releasing it is asking its holder, the
``gpupool reserve`` process, to end it: SIGTERM, which that process handles
by stopping its command (SIGTERM, grace, SIGKILL), releasing the GPUs and
exiting 0. Then this command waits, at most :data:`RELEASE_WAIT` seconds,
until the hold has left the ledger.

Refused (exit 1, nothing sent): a hold that is a program's allocation (a
script, ``gpupool run``: ending it would kill someone's work), another user's
reservation unless we are root, and a holder in another PID namespace (a
container sharing the ledger: its pid means another process here). The
ledger itself is never written: a user can only signal processes the kernel
lets them signal, so gpupool adds no way to end another user's holds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .._core.errors import LedgerError
from .._ledger.members import is_alive
from .._ledger.rows import HoldRow, LedgerState, MemberRow
from .._ledger.store import DB_NAME, LedgerStore
from .args import add_ledger_option, int_arg, ledger_dir

__all__ = ["RELEASE_WAIT", "add_parser", "release"]

#: How long ``gpupool release`` waits for the reservation to leave the ledger.
RELEASE_WAIT = 30.0
#: How often it looks meanwhile.
_POLL = 0.05

EXIT_OK = 0
EXIT_FAILED = 1

_PREFIX = "gpupool release"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "release",
        help="end a reservation made with `gpupool reserve`",
        description=(
            "End reservation ID (the id `gpupool reserve` printed; `gpupool status` lists "
            "them): its gpupool reserve process stops its command and releases the GPUs. "
            "Only reservations can be released, by their user or root."
        ),
        epilog="exit codes: 0 released (or gone already), 1 refused, unknown or still held.",
    )
    parser.add_argument("id", type=int_arg(1, label="ID"), metavar="ID")
    add_ledger_option(parser)
    parser.set_defaults(handler=command)
    return parser


def command(args: argparse.Namespace) -> int:
    return release(args.id, ledger=args.ledger)


def _say(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr, flush=True)


def release(hold_id: int, *, ledger: Path | None = None, wait: float = RELEASE_WAIT) -> int:
    """End reservation ``hold_id`` of ``ledger`` (default: the machine's); the exit code."""
    directory = ledger_dir(ledger)
    state = _read(directory)
    hold = None if state is None else state.holds.get(hold_id)
    if state is None or hold is None:
        _say(
            f"there is no reservation {hold_id} in the ledger at {directory} "
            "(`gpupool status` lists the holders)"
        )
        return EXIT_FAILED
    member = state.members.get(hold.member)
    refusal = refusal_of(hold, member, euid=os.geteuid(), pid_namespace=_pid_namespace())
    if refusal is not None:
        _say(f"error: {refusal}")
        return EXIT_FAILED
    if member is None or not is_alive(directory, member.id):
        _say(f"reservation {hold_id} has ended already: its process is gone")
        return EXIT_OK
    try:
        os.kill(member.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # exited meanwhile: its hold goes with it
    except PermissionError as error:
        _say(f"error: cannot signal pid {member.pid}: {error.strerror or error}")
        return EXIT_FAILED
    if _wait_until_gone(directory, hold, wait):
        _say(f"reservation {hold_id} released")
        return EXIT_OK
    _say(
        f"error: sent SIGTERM to pid {member.pid} ({member.command}), but reservation "
        f"{hold_id} is still held after {wait:g} s"
    )
    return EXIT_FAILED


def refusal_of(
    hold: HoldRow, member: MemberRow | None, *, euid: int, pid_namespace: str | None
) -> str | None:
    """Why ``hold`` may not be released by a process of ``euid`` in ``pid_namespace``, or None.

    A pure function of the ledger's rows, so that every refusal can be tested
    without another user or a container.
    """
    if hold.kind != "reservation":
        if member is None:
            return (
                f"allocation {hold.id} belongs to a program, not a reservation; only "
                "reservations made with gpupool reserve can be released"
            )
        return (
            f"allocation {hold.id} belongs to a running program (pid {member.pid}, "
            f"{member.command}); only reservations made with gpupool reserve can be released"
        )
    if member is None:
        return None  # its process is gone: nothing to refuse, nothing to signal
    if euid != 0 and member.uid != euid:
        return f"reservation {hold.id} belongs to {member.user}; only they or root can release it"
    if member.pid_namespace != pid_namespace:
        return (
            f"reservation {hold.id} is held by a process in another PID namespace (a "
            f"container sharing the ledger; pid {member.pid} there): release it from there"
        )
    return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _read(directory: Path) -> LedgerState | None:
    """The ledger's state, or None where there is no ledger (nothing is created)."""
    if not (directory / DB_NAME).exists():
        if not directory.is_dir():
            raise LedgerError(f"there is no ledger at {directory}: the directory does not exist")
        return None
    store = LedgerStore(directory)
    try:
        return store.read()
    finally:
        store.close_connection()


def _wait_until_gone(directory: Path, hold: HoldRow, wait: float) -> bool:
    """Whether ``hold`` left the ledger (or its holder died) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        state = _read(directory)
        current = None if state is None else state.holds.get(hold.id)
        if current is None or current.member != hold.member:
            return True
        if not is_alive(directory, hold.member):
            return True  # dead: the next pool to look frees it, status shows it gone
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
