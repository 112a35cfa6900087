"""The one reader of ``/proc/PID/stat`` (and of the little else of ``/proc`` gpupool needs).

Three layers need the same facts about a process: ``run_process`` (which
processes belong to a job, and is a pid still the process it was), the
journal (is the owner of a journal still alive, which recorded process
groups still have members) and the tests. They used to parse ``stat`` each
in their own way and disagreed on which states are dead; this module is
below all of them in the import contract (``pyproject.toml``) so that they
can share one parser.

The parser follows proc(5):

* field 2, ``comm``, is in parentheses and may itself hold spaces and
  parentheses (a process may name itself ``a) (b``), so the fields after it
  are split from the *last* ``)``;
* ``state`` (field 3) is one letter; a process in ``Z`` (zombie: exited, not
  yet reaped), ``X`` (dead, from Linux 2.6.0) or ``x`` (dead, Linux
  2.6.33-3.13) holds nothing and can be signalled no more: :data:`DEAD_STATES`;
* ``starttime`` (field 22) is in clock ticks since boot: with the pid it
  identifies a process across pid reuse, and with the boot id across reboots.

Where ``/proc`` does not exist (macOS) every reader returns ``None`` or an
empty list: callers decide what not knowing means for them. The same holds
for a process that is gone, or one whose files this user may not read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import final

import attrs

__all__ = [
    "DEAD_STATES",
    "PROC",
    "ProcInfo",
    "boot_id",
    "cmdline",
    "comm",
    "has_proc",
    "list_pids",
    "parse_stat",
    "pid_namespace",
    "read_environ",
    "read_stat",
    "start_time",
]

#: Where the kernel shows its processes.
PROC = Path("/proc")

#: States of a process that has exited (proc(5)): zombie, dead, dead on Linux 2.6.33-3.13.
DEAD_STATES = frozenset({"Z", "X", "x"})


@final
@attrs.frozen
class ProcInfo:
    """One process as its ``/proc/PID/stat`` showed it."""

    pid: int
    #: The command name (at most 15 bytes; decoded with replacement).
    comm: str
    #: One letter of proc(5): R, S, D, Z, T, t, X, x, I, ...
    state: str
    ppid: int
    #: Process group id.
    pgid: int
    #: Session id.
    session: int
    #: Clock ticks since boot when the process started: with ``pid``, its identity.
    start_time: int

    @property
    def identity(self) -> tuple[int, int]:
        """``(pid, start_time)``: unique for as long as the machine is up."""
        return (self.pid, self.start_time)

    @property
    def alive(self) -> bool:
        """False once the process has exited (see :data:`DEAD_STATES`)."""
        return self.state not in DEAD_STATES


def parse_stat(text: bytes) -> ProcInfo | None:
    """The content of a ``/proc/PID/stat`` file as a :class:`ProcInfo`, or ``None`` if malformed."""
    head, close, rest = text.rpartition(b")")
    pid_text, open_, comm = head.partition(b"(")
    fields = rest.split()
    if not close or not open_ or len(fields) < 20:
        return None
    try:
        return ProcInfo(
            pid=int(pid_text),
            comm=comm.decode("utf-8", "replace"),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            session=int(fields[3]),
            start_time=int(fields[19]),
        )
    except ValueError:
        return None


def read_stat(pid: int, *, proc: Path = PROC) -> ProcInfo | None:
    """Process ``pid`` as ``/proc`` shows it now; ``None`` if it is gone (or there is no ``/proc``)."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return parse_stat(raw)


def start_time(pid: int, *, proc: Path = PROC) -> int | None:
    """When ``pid`` started, in clock ticks since boot; ``None`` if unknown or gone."""
    info = read_stat(pid, proc=proc)
    return None if info is None else info.start_time


def list_pids(*, proc: Path = PROC) -> list[int]:
    """Every pid ``/proc`` lists now (none without ``/proc``), in no particular order."""
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def read_environ(pid: int, *, proc: Path = PROC) -> list[bytes] | None:
    """The environment ``pid`` was started with, as ``NAME=value`` entries; ``None`` if unreadable."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    return raw.split(b"\0")


def cmdline(pid: int | str, *, proc: Path = PROC) -> str | None:
    """The command line of ``pid``, its arguments joined by spaces; ``None`` if unreadable.

    The kernel keeps the arguments NUL-separated; they are joined with spaces
    for people to read (``gpupool status``), so argument boundaries are lost.
    A kernel thread or a zombie has an empty command line: ``""``, not
    ``None``, since the file was read (fall back to :func:`comm` to name it).
    """
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def comm(pid: int | str, *, proc: Path = PROC) -> str | None:
    """The command name of ``pid`` (at most 15 bytes, as in ``stat``); ``None`` if unreadable."""
    try:
        raw = (proc / str(pid) / "comm").read_bytes()
    except OSError:
        return None
    return raw.removesuffix(b"\n").decode("utf-8", "replace")


def pid_namespace(pid: int | str = "self", *, proc: Path = PROC) -> str | None:
    """The PID namespace ``pid`` is in, as the kernel names it (``pid:[4026531836]``).

    Two processes see each other's pids only when this is equal, so a pid
    recorded by a process in another namespace (a container sharing a
    directory) names some other process here, or none. Reading another
    user's process needs ptrace access (root, or the same user): otherwise
    this is ``None``, so a process should record its own (``"self"``) rather
    than have others read it.
    """
    try:
        return os.readlink(proc / str(pid) / "ns" / "pid")
    except OSError:
        return None


def boot_id(*, proc: Path = PROC) -> str | None:
    """This boot's id (``/proc/sys/kernel/random/boot_id``): tells two boots apart."""
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def has_proc(*, proc: Path = PROC) -> bool:
    """Whether this machine has ``/proc`` at all (Linux does, macOS does not)."""
    return proc.is_dir()
