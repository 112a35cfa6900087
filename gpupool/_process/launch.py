"""How ``run_process`` starts a job: directly, as its own child, or in a terminal (tmux).

``run_process`` owns a job whatever starts it: it tells the pool and the
journal (``started``), tracks and ends every process of the job
(``proctree``, ``run._end_job``), and reads the end of its log. Only the first
step differs between launch modes, so it is behind one small interface:

* a :class:`Launcher` starts the job (``args`` run directly or by ``/bin/sh
  -c``, the environment, the working directory, the log) and returns a
  :class:`JobProcess`;
* a :class:`JobProcess` is what ``run_process`` needs of the job's leader:
  its pid (also its process group and session), its return code once it has
  been reaped (``None`` before: while it is ``None`` the group id cannot have
  been recycled, so signalling the group is safe), :meth:`JobProcess.wait`,
  :meth:`JobProcess.wait_or_lost` and :meth:`JobProcess.aclose`.

:data:`DIRECT` is the default: ``anyio.open_process`` in a new session,
output into the log file or a pipe. ``gpupool._process.tmux`` starts the job
in a tmux window instead, through a wrapper that is the job's parent there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Protocol, final

import anyio
import anyio.abc
import anyio.to_thread

__all__ = ["DIRECT", "DirectLauncher", "JobProcess", "Launcher"]


class JobProcess(Protocol):
    """The leader of a started job, as ``run_process`` drives it."""

    @property
    def pid(self) -> int:
        """The leader's pid: also the job's process group and session id."""

    @property
    def returncode(self) -> int | None:
        """The exit status (``-N``: signal N) once the leader is reaped, else ``None``."""

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        """The job's output, when the launcher captures it here (no log file)."""

    async def wait(self) -> int:
        """Wait until the leader has exited and is reaped; its return code."""

    async def wait_or_lost(self) -> None:
        """Wait until the leader has exited, or the job can no longer run where it was
        started (its terminal went away): then it must be ended."""

    async def aclose(self) -> None:
        """Release what the launch holds (pipes; for tmux, the wrapper), once the job is over."""


class Launcher(Protocol):
    """Starts a job's leader in a session of its own."""

    async def start(
        self,
        args: str | tuple[str, ...],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        log: Path | None,
    ) -> JobProcess:
        """Start ``args`` (a string runs under ``/bin/sh -c``) with stdin ``/dev/null`` and
        stdout and stderr, interleaved, appended to ``log`` (or captured when ``None``)."""
        ...


@final
class _DirectProcess:
    """An ``anyio`` process, which is its own leader: the job is our child."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        return self._process.stdout

    async def wait(self) -> int:
        return await self._process.wait()

    async def wait_or_lost(self) -> None:
        await self._process.wait()

    async def aclose(self) -> None:
        await self._process.aclose()


@final
class DirectLauncher:
    """The job as a child of this process (``anyio.open_process``, ``start_new_session``)."""

    async def start(
        self,
        args: str | tuple[str, ...],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        log: Path | None,
    ) -> JobProcess:
        log_file: IO[bytes] | None = None
        if log is not None:
            log_file = await anyio.to_thread.run_sync(log.open, "ab")
        try:
            process = await anyio.open_process(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file if log_file is not None else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()  # the child holds its own descriptor
        return _DirectProcess(process)


#: The default launch: the job is a child of the caller.
DIRECT = DirectLauncher()
