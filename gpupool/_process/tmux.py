"""Jobs in tmux windows (``gpupool run --tmux``): a :class:`~gpupool._process.launch.Launcher`.

Each job runs in a window of a detached tmux session, under the wrapper
``tmux_shim.py`` (its module docstring has the design and the protocol),
which is the job's parent there and talks to this side over a Unix socket in
a private directory. Everything else is ``run_process``'s, unchanged: the
hooks that journal the job's process group and tell the pool, the tracking,
the timeout, the ending of the job, the log's tail and the CUDA OOM check.
What this side adds is the window's lifecycle and one more way for a job to
end: its window went away (``tmux kill-window``, the server killed), which
:attr:`TmuxWindow.lost` reports so that the caller fails the job with that
reason.

The session (:class:`TmuxSession`) is named after the jobs file and marked
with the tmux user option ``@gpupool_owner`` (the journal's path): a session
of that name that belongs to something else (another run's journal, or a
person's own session) is left alone and the next free ``NAME-2``, ``NAME-3``
is used. It is created with the first window and disappears with the last one,
as tmux does.

Every tmux command goes to the server tmux itself would use: ``$TMUX``
inside tmux, else ``$TMUX_TMPDIR`` (default ``/tmp``)``/tmux-UID/default``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, final

import anyio
import anyio.abc
import anyio.streams.buffered
import anyio.to_thread
import attrs

from .._core.errors import GPUPoolError
from .._system import procfs

__all__ = [
    "OWNER_OPTION",
    "TmuxError",
    "TmuxJob",
    "TmuxSession",
    "TmuxWindow",
    "WindowState",
    "session_name",
    "tmux_command",
    "window_name",
]

#: The tmux user option that marks a session as a gpupool run's (value: the journal path).
OWNER_OPTION = "@gpupool_owner"
#: The wrapper tmux runs in each window.
SHIM = Path(__file__).with_name("tmux_shim.py")
#: How long the wrapper may take to connect once its window exists.
_CONNECT_TIMEOUT = 15.0
#: How long the wrapper may take to drain the job's output once the job is over.
_FLUSH_TIMEOUT = 3.0
_POLL_INTERVAL = 0.05
#: The return code of a job whose wrapper vanished (killed outright): the status is
#: lost with it. -1, as for SIGHUP: the job's terminal went away.
VANISHED_RETURNCODE = -int(signal.SIGHUP)


class TmuxError(GPUPoolError, RuntimeError):
    """tmux is missing, refused a command, or a job's window went away."""


def tmux_command() -> str:
    """The path of ``tmux``; :class:`TmuxError` naming the fix when it is not installed."""
    found = shutil.which("tmux")
    if found is None:
        raise TmuxError(
            "--tmux needs tmux, which is not installed or not on PATH "
            "(Debian/Ubuntu: apt-get install tmux)"
        )
    return found


def session_name(jobs_file: Path) -> str:
    """A tmux session name for ``jobs_file``: its file name, with what tmux forbids
    (``.`` and ``:``) and blanks turned into ``_`` (``sweep.txt`` -> ``sweep_txt``)."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in jobs_file.name)
    return name or "gpupool"


async def _tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = await anyio.run_process([tmux_command(), *args], check=False)
    if check and result.returncode != 0:
        words = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}"
        raise TmuxError(f"tmux {args[0]} failed: {words}")
    return result


@final
@attrs.frozen
class WindowState:
    """What ``gpupool attach`` needs to find a job's window: written beside its log."""

    socket: str
    session: str
    window_id: str
    window_name: str
    job_pid: int

    def target(self) -> str:
        """The window as a tmux target: ``=SESSION:@ID`` (exact session name)."""
        return f"={self.session}:{self.window_id}"

    def dump(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def load(cls, text: str) -> WindowState:
        """Parse :meth:`dump`'s text; ``ValueError`` for anything else."""
        data = json.loads(text)
        try:
            return cls(
                socket=str(data["socket"]),
                session=str(data["session"]),
                window_id=str(data["window_id"]),
                window_name=str(data["window_name"]),
                job_pid=int(data["job_pid"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a window state: {error}") from None


@attrs.define(eq=False)
class TmuxSession:
    """The run's tmux session: named once, created with its first window."""

    base_name: str
    #: What ``@gpupool_owner`` holds for this run (the journal's path).
    owner: str
    #: How long the window of a failed job stays open (seconds).
    keep_failed_s: float = 0.0
    name: str | None = None
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)

    async def _owner_of(self, name: str) -> str | None:
        """``@gpupool_owner`` of session ``name``: None if there is no such session,
        ``""`` if it is not a gpupool run's."""
        # has-session, since display-message of a missing session prints nothing and
        # exits 0 when the server runs.
        exists = await _tmux("has-session", "-t", f"={name}", check=False)
        if exists.returncode != 0:
            return None
        shown = await _tmux(
            "display-message", "-p", "-t", f"={name}:", "#{" + OWNER_OPTION + "}", check=False
        )
        return shown.stdout.decode(errors="replace").strip()

    async def _pick_name(self) -> str:
        for number in range(1, 1000):
            name = self.base_name if number == 1 else f"{self.base_name}-{number}"
            owner = await self._owner_of(name)
            if owner is None or owner == self.owner:
                return name
        raise TmuxError(f"no free tmux session name like {self.base_name!r}")

    async def open_window(
        self, window_name: str, command: str, cwd: Path | None
    ) -> tuple[int, str, str]:
        """A new window running ``command``; its pane's pid, its id and the server's socket."""
        fmt = "#{pane_pid} #{window_id} #{socket_path}"
        where = ["-c", str(cwd)] if cwd is not None else []
        async with self._lock:
            owner = None if self.name is None else await self._owner_of(self.name)
            if self.name is None or owner not in (None, self.owner):
                # First window, or the session ended with its last window and
                # something else took its name since: never a window in theirs.
                self.name = await self._pick_name()
                owner = await self._owner_of(self.name)
            if owner is None:
                created = await _tmux(
                    "new-session",
                    "-d",
                    "-s",
                    self.name,
                    "-n",
                    window_name,
                    "-x",
                    "200",
                    "-y",
                    "50",
                    "-P",
                    "-F",
                    fmt,
                    *where,
                    command,
                )
                await _tmux("set-option", "-t", f"={self.name}:", OWNER_OPTION, self.owner)
            else:
                created = await _tmux(
                    "new-window",
                    "-d",
                    "-t",
                    f"={self.name}:",
                    "-n",
                    window_name,
                    "-P",
                    "-F",
                    fmt,
                    *where,
                    command,
                )
        pane_pid, window_id, socket_path = created.stdout.decode().strip().split(" ", 2)
        # Closed when its job ends, whatever the user's tmux.conf says: a sweep of
        # 1,000 jobs must not leave 1,000 dead windows (failed ones linger a while).
        await _tmux("set-option", "-w", "-t", window_id, "remain-on-exit", "off", check=False)
        await _tmux("set-option", "-w", "-t", window_id, "automatic-rename", "off", check=False)
        return int(pane_pid), window_id, socket_path

    def window(self, window_name: str, *, state_path: Path | None = None) -> TmuxWindow:
        """A launcher that starts one job in a new window named ``window_name``."""
        return TmuxWindow(self, window_name, state_path)


@attrs.define(eq=False)
class TmuxWindow:
    """Starts one job in a window of ``session`` (a ``Launcher``); says if the window was lost."""

    session: TmuxSession
    window_name: str
    #: Where the :class:`WindowState` is written while the job runs (for ``gpupool attach``).
    state_path: Path | None = None
    #: Why the job's window went away before the job ended, or None.
    lost: str | None = None
    state: WindowState | None = None

    async def start(
        self,
        args: str | tuple[str, ...],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        log: Path | None,
    ) -> TmuxJob:
        private = await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "gpupool-tmux-")
        address = os.path.join(private, "control")
        try:
            async with await anyio.create_unix_listener(address) as listener:
                command = shlex.join([sys.executable, "-I", str(SHIM), address])
                pane_pid, window_id, socket_path = await self.session.open_window(
                    self.window_name, command, cwd
                )
                try:
                    stream = await _accept(listener, pane_pid, self.window_name)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await _tmux("kill-window", "-t", window_id, check=False)
                    raise
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, private, True)
        buffered = anyio.streams.buffered.BufferedByteStream(stream)
        spec: dict[str, Any] = {
            "args": args if isinstance(args, str) else list(args),
            "env": dict(env),
            "cwd": None if cwd is None else str(cwd),
            "log": None if log is None else str(log),
            "keep_failed_s": self.session.keep_failed_s,
            "ignored": _ignored_signals(),
        }
        await stream.send(json.dumps(spec).encode() + b"\n")
        reply = await _receive(buffered)
        if reply is None or "started" not in reply:
            await buffered.aclose()
            if reply is not None and "error" in reply:
                raise OSError(int(reply["error"]), str(reply["message"]))
            raise TmuxError(
                f"the job's wrapper in tmux window {self.window_name!r} ended before starting it"
            )
        job_pid = int(reply["started"])
        assert self.session.name is not None
        self.state = WindowState(
            socket_path, self.session.name, window_id, self.window_name, job_pid
        )
        if self.state_path is not None:
            await anyio.to_thread.run_sync(self.state_path.write_text, self.state.dump())
        return TmuxJob(self, buffered, job_pid, procfs.start_time(job_pid))


def _ignored_signals() -> list[int]:
    """The signals a direct child would start with ignored: those this process ignores,
    but SIGPIPE and SIGXFSZ, which Python ignores for itself and ``subprocess`` resets."""
    restored = {int(signal.SIGPIPE), int(getattr(signal, "SIGXFSZ", signal.SIGPIPE))}
    return [
        int(signum)
        for signum in signal.valid_signals()
        if signum not in restored and signal.getsignal(signum) is signal.SIG_IGN
    ]


async def _accept(
    listener: anyio.abc.SocketListener, pane_pid: int, window: str
) -> anyio.abc.SocketStream:
    """The wrapper's connection; :class:`TmuxError` if it dies or times out first."""
    accepted: list[anyio.abc.SocketStream] = []

    async def take(scope: anyio.CancelScope) -> None:
        # Listener.serve would go on accepting; one connection is all there is.
        stream = await listener.accept()
        accepted.append(stream)
        scope.cancel()

    with anyio.move_on_after(_CONNECT_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, tg.cancel_scope)
            # Polled: the wrapper is the tmux server's child, not ours, so
            # nothing signals its death here but its absence from /proc.
            while True:
                await anyio.sleep(_POLL_INTERVAL)
                if procfs.read_stat(pane_pid) is None:
                    break
            tg.cancel_scope.cancel()
    if not accepted:
        raise TmuxError(f"the job's wrapper in tmux window {window!r} did not start")
    return accepted[0]


async def _receive(stream: anyio.streams.buffered.BufferedByteStream) -> dict[str, Any] | None:
    """The next message, or None when the wrapper has gone."""
    try:
        line = await stream.receive_until(b"\n", 1 << 20)
    except (
        anyio.IncompleteRead,
        anyio.EndOfStream,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
    ):
        return None
    message: dict[str, Any] = json.loads(line)
    return message


@final
class TmuxJob:
    """The job's leader as ``run_process`` drives it, through its wrapper in the window.

    The wrapper keeps the leader unreaped until :meth:`aclose`, so while
    :attr:`returncode` is None the group id is the job's. If the wrapper
    vanishes (killed outright), the leader is watched in ``/proc`` instead,
    by pid and start time.
    """

    def __init__(
        self,
        window: TmuxWindow,
        stream: anyio.streams.buffered.BufferedByteStream,
        pid: int,
        start_time: int | None,
    ) -> None:
        self._window = window
        self._stream = stream
        self._pid = pid
        self._start_time = start_time
        self._returncode: int | None = None
        self._connected = True

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and not self._connected and not self._leader_exists():
            self._returncode = VANISHED_RETURNCODE
        return self._returncode

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        return None  # the wrapper tees the output into the log

    def _leader_exists(self) -> bool:
        info = procfs.read_stat(self._pid)
        return info is not None and (
            self._start_time is None or info.start_time == self._start_time
        )

    def _lose(self, reason: str) -> None:
        if self._window.lost is None:
            self._window.lost = reason

    async def _next(self) -> None:
        """Handle one message of the wrapper (or its going away)."""
        message = await _receive(self._stream)
        if message is None:
            self._connected = False
            if self._returncode is None:
                self._lose(
                    f"the job's wrapper in tmux window {self._window.window_name!r} was killed"
                )
        elif "exited" in message:
            self._returncode = int(message["exited"])
        elif message.get("hangup"):
            self._lose(
                f"its tmux window {self._window.window_name!r} was closed "
                "(tmux kill-window, or the tmux server ended) while it ran"
            )

    async def wait_or_lost(self) -> None:
        while self._returncode is None and self._window.lost is None:
            await self._next()

    async def wait(self) -> int:
        while self.returncode is None:
            if self._connected:
                await self._next()
            else:
                await anyio.sleep(_POLL_INTERVAL)
        assert self._returncode is not None
        return self._returncode

    async def aclose(self) -> None:
        """Tell the wrapper the job is over; wait until it has written the last output."""
        if self._connected:
            with (
                anyio.move_on_after(_FLUSH_TIMEOUT),
                contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
            ):
                await self._stream.send(b'{"finish": true}\n')
                while self._connected:
                    message = await _receive(self._stream)
                    if message is None or message.get("flushed"):
                        break
        await self._stream.aclose()
        self._connected = False
        state = self._window.state_path
        if state is not None:
            await anyio.to_thread.run_sync(_remove, state)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def window_name(label: str) -> str:
    """A tmux window name from a job's label: at most 40 characters, ``.`` and ``:``
    (which tmux targets give a meaning) and unprintable ones as ``_``."""
    name = "".join(c if c.isprintable() and c not in ".:" else "_" for c in label)[:40]
    return name or "job"
