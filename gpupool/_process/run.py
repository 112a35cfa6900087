"""``run_process``: one command on the GPUs of an allocation, ended cleanly.

Design notes. The command starts in a session of its own
(``start_new_session``), so its pid is also its process group and session
id, and Ctrl-C in the terminal reaches gpupool rather than the job: gpupool
decides when and how the job ends. Ending a job is always the same
sequence (``_end_job``):

1. SIGTERM to the process group while the leader is unreaped, and to every
   other process of the job found in ``/proc`` (see ``proctree``: group,
   session, parent chain, an environment token, and pids recorded while the
   job ran);
2. up to ``grace_period`` seconds for all of them to exit, signalling any that
   appear meanwhile;
3. SIGKILL to whatever is left, then reap the leader;
4. SIGKILL again to anything of the job still found, until two scans in a
   row find nothing (bounded: a process stuck in the kernel may outlive it).

It runs when the timeout expires, when the caller is cancelled (shielded, so
the cancellation waits for it), and also after a leader that exited on its
own left processes behind: a data loader that outlives its trainer would
hold GPU memory that the pool is about to grant to the next job.

Who learns that a job started (the pool that granted its allocation, the
journal of the runner task it runs for) is decided in ``started``: hooks
carried by the allocation and set by the runner, never an import of the pool
or the journal.

The leader is always reaped before ``run_process`` returns or raises.
Orphaned grandchildren are reaped by init (PID 1), as usual on Linux; a
container without a reaping init (``docker run`` without ``--init``) keeps
them as harmless ``<defunct>`` entries.
"""

from __future__ import annotations

import functools
import inspect
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, final, runtime_checkable

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from .._core.checks import (
    check_bool,
    check_callable,
    check_finite_seconds,
    check_instance,
    check_seconds,
)
from .._core.errors import GPUPoolError
from .._core.model import GPUAllocation, StartedProcess
from .._core.oom import CUDA_OOM_PATTERN
from .._system.procfs import ProcInfo
from .launch import DIRECT, Launcher
from .proctree import TOKEN_VARIABLE, JobTracker, killpg_quietly, signal_all
from .started import announce_start

__all__ = [
    "CUDA_OOM_PATTERN",
    "DEFAULT_GRACE_PERIOD",
    "TAIL_LINES",
    "ProcessFailed",
    "ProcessResult",
    "SupportsRegisterProcess",
    "job_environment",
    "run_process",
]

#: Seconds between SIGTERM and SIGKILL unless the caller says otherwise.
DEFAULT_GRACE_PERIOD = 5.0

# Only the tail of a long log is searched for an out-of-memory message: the
# message is in the traceback at the end, and a log may be gigabytes long.
_OOM_SCAN_BYTES = 16 * 1024 * 1024
#: How much of the end of its output a result keeps in ``output_tail``: at most
#: this many lines, taken from at most ``_TAIL_BYTES`` bytes (a progress bar can
#: make one "line" megabytes long).
TAIL_LINES = 20
_TAIL_BYTES = 8 * 1024
# How often the processes of a running job are recorded.
_TRACK_INTERVAL = 0.5
# How often the end of a job is checked while it is being ended.
_POLL_INTERVAL = 0.05
# After the job is gone, how long captured output may still take to arrive
# (a process that escaped every net may hold the pipe open for ever).
_DRAIN_TIMEOUT = 1.0
# After SIGKILL, how long to keep killing (a job that forks while dying).
_KILL_ROUNDS_TIMEOUT = 2.0


@runtime_checkable
class SupportsRegisterProcess(Protocol):
    """A pool that wants to know which processes work for an allocation."""

    def register_process(self, allocation: GPUAllocation, pid: int) -> object: ...


@final
@attrs.frozen
class ProcessResult:
    """How one command ended.

    ``returncode`` follows :mod:`subprocess`: the exit status, or ``-N`` when
    signal N ended the leader (as after a timeout). ``pid`` is also the job's
    process group and session id. ``output`` holds stdout and stderr
    interleaved when no ``log_path`` was given; with one, the output is in the
    file and ``output`` is ``None``. ``output_tail`` is the last lines (at most
    :data:`TAIL_LINES`) that this run wrote, to ``output`` or to the log (read
    as the run ends, and only what this run appended, since retries append to
    the same file), so that a failure can say why without anyone opening the
    log. ``leftovers`` counts processes other than the leader that gpupool had
    to signal (after a timeout, a cancel, or a leader that exited and left
    them behind).
    """

    args: str | tuple[str, ...]
    returncode: int
    pid: int
    duration_s: float
    timed_out: bool = False
    cuda_oom: bool = False
    log_path: Path | None = None
    output: str | None = None
    leftovers: int = 0
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        """Exit status 0, within the timeout."""
        return self.returncode == 0 and not self.timed_out

    @property
    def exit_code(self) -> int:
        """Same as :attr:`returncode`."""
        return self.returncode

    @property
    def pgid(self) -> int:
        """The job's process group id (equal to :attr:`pid`)."""
        return self.pid

    def describe(self) -> str:
        """One line saying how the command ended, for logs and summaries."""
        if self.timed_out:
            text = f"timed out after {self.duration_s:.1f}s"
        elif self.returncode < 0:
            text = f"killed by signal {-self.returncode}"
        else:
            text = f"exit code {self.returncode}"
        if self.cuda_oom:
            text += " (CUDA out of memory)"
        return text

    def check(self, *, with_tail: bool = True) -> ProcessResult:
        """Return ``self`` if :attr:`ok`, else raise :class:`ProcessFailed`.

        ``with_tail=False`` leaves :attr:`output_tail` out of the message (for
        callers that point at the log instead, as ``gpupool run`` does).
        """
        if not self.ok:
            raise ProcessFailed(self, with_tail=with_tail)
        return self


class ProcessFailed(GPUPoolError, subprocess.CalledProcessError):
    """A command did not succeed: a non-zero exit, a signal, or its timeout.

    ``result`` is the :class:`ProcessResult`; the message says how the command
    ended and, unless ``with_tail=False``, quotes the last lines of its output,
    so that a runner's ``TaskResult.error`` shows why. It is also a
    :class:`subprocess.CalledProcessError`, which ``anyio.run_process`` and
    ``subprocess.run`` raise with ``check=True``: code that catches that keeps
    working, and ``returncode``, ``cmd`` and ``output`` mean what they mean
    there (``stderr`` is ``None``: it is interleaved with stdout).
    """

    def __init__(self, result: ProcessResult, *, with_tail: bool = True) -> None:
        check_instance("result", result, ProcessResult, "a ProcessResult")
        message = _failure_message(result, with_tail=with_tail)
        GPUPoolError.__init__(self, message)
        self.result = result
        self.with_tail = with_tail
        self.returncode = result.returncode
        self.cmd = result.args
        self.output = result.output
        self.stderr = None

    @property
    def cuda_oom(self) -> bool:
        """Whether the command's output showed a CUDA out-of-memory error
        (``result.cuda_oom``); what the runner's out-of-memory retries go by."""
        return self.result.cuda_oom

    def __str__(self) -> str:
        # CalledProcessError has its own __str__; ours is the message built above.
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        # The default would call ProcessFailed(message); rebuild from the result instead.
        return (functools.partial(type(self), with_tail=self.with_tail), (self.result,))


def _failure_message(result: ProcessResult, *, with_tail: bool) -> str:
    """``command 'x' failed: exit code 1``, then the output's last lines, indented."""
    args = result.args if isinstance(result.args, str) else shlex.join(result.args)
    if len(args) > 80:
        args = args[:77] + "..."
    message = f"command {args!r} failed: {result.describe()}"
    lines = result.output_tail.splitlines()
    if not with_tail or not lines:
        return message
    source = "its output" if result.log_path is None else str(result.log_path)
    quoted = "\n".join(f"    {line}" for line in lines)
    count = "line" if len(lines) == 1 else f"{len(lines)} lines"
    return f"{message}; the last {count} of {source}:\n{quoted}"


async def run_process(
    cmd: str | Sequence[str | os.PathLike[str]],
    *,
    allocation: GPUAllocation | None = None,
    timeout: float | None = None,
    log_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    pool: SupportsRegisterProcess | None = None,
    on_start: Callable[[int], object] | None = None,
    check: bool = True,
    # How the job's leader starts (gpupool._process.launch): a hook for ``gpupool run
    # --tmux``, not part of the public contract (the reference leaves it out).
    _launcher: Launcher | None = None,
) -> ProcessResult:
    """Run ``cmd`` to the end on the GPUs of ``allocation``; never leave a process behind.

    ``cmd`` is either a sequence of arguments, run directly (no shell), or a
    string, run by ``/bin/sh -c`` (pipes, ``&&`` and redirections work; quote
    with care). The child's environment is ``os.environ``, then the memory
    caps of a shared allocation (``allocation.memory_env``: docs/memory.md),
    then ``env``, then ``allocation.device_env`` (``CUDA_VISIBLE_DEVICES``
    with the GPUs' UUIDs and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``): ``env`` may
    set a framework's memory settings otherwise, but the job cannot escape
    its GPUs by accident. stdin is ``/dev/null``. stdout and stderr go, interleaved, to
    ``log_path`` (appended to, so the output of retries accumulates) or, without
    one, into :attr:`ProcessResult.output`.

    On ``timeout`` (seconds) the job is ended (SIGTERM to every process of
    the job, ``grace_period`` seconds, then SIGKILL). When the caller is
    cancelled, the job is ended the same way before the cancellation
    propagates.

    With ``check=True`` (the default, as in ``anyio.run_process``), a command
    that did not succeed (a non-zero exit, ended by a signal, or timed out)
    raises :class:`ProcessFailed`, whose message quotes the last lines of its
    output: inside a runner task that makes the task FAILED, and ``retries=``
    apply. ``check=False`` returns the :class:`ProcessResult` whatever the
    outcome (``returncode``, ``timed_out``), for callers that judge it
    themselves. Either way the job is over and reaped first.

    Once the process exists, ``on_start(pid)`` is called, then the
    ``on_process_started`` hooks (``gpupool._process.started``): inside a task
    of a :class:`ParallelRunner` with a journal, the journal records the
    process group, so that a restarted run kills a crashed run's leftovers
    before it grants their GPUs again (and forgets it once the job is over);
    then the pool that granted ``allocation`` learns the process (its hook
    travels with the allocation), or, if ``pool`` is given, that pool's
    ``pool.register_process(allocation, pid)``. ``on_start`` and
    ``register_process`` may return an awaitable, which is awaited. If any of
    these raises, the job is ended and the error propagates.
    """
    # Every launch mode (``gpupool run`` and ``gpupool run --tmux``) takes this one path:
    # only the start differs; the hooks, the tracking, the ending of the job and the
    # reading of its log are the same.
    launcher = DIRECT if _launcher is None else _launcher
    args = _check_command(cmd)
    if allocation is not None:
        check_instance("allocation", allocation, GPUAllocation, "a GPUAllocation or None")
    timeout = check_seconds("timeout", timeout)
    grace = check_finite_seconds("grace_period", grace_period)
    extra_env = _check_env(env)
    log = _check_path("log_path", log_path)
    workdir = _check_path("cwd", cwd)
    if pool is not None and not isinstance(pool, SupportsRegisterProcess):
        raise TypeError(f"pool must have a register_process method, got {pool!r}")
    if pool is not None and allocation is None:
        raise ValueError("pool is only used with an allocation; pass allocation= too")
    if on_start is not None:
        check_callable("on_start", on_start, allowed="callable or None")
    check_bool("check", check, allowed="a bool")

    token = uuid.uuid4().hex
    child_env = job_environment(allocation, extra_env)
    child_env[TOKEN_VARIABLE] = token

    start_offset = 0
    if log is not None:
        start_offset = await anyio.to_thread.run_sync(_log_size, log)
    started = anyio.current_time()
    process = await launcher.start(args, env=child_env, cwd=workdir, log=log)

    tracker = JobTracker(process.pid, token)
    chunks: list[bytes] = []
    timed_out = False
    leftovers = 0
    try:
        try:
            await _call_hook(on_start, process.pid)
            announce_end = announce_start(
                StartedProcess(process.pid, allocation), allocation_hook=pool is None
            )
            if pool is not None:
                assert allocation is not None
                await _call_hook(pool.register_process, allocation, process.pid)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _end_job(process, tracker, grace)
            raise
        async with anyio.create_task_group() as tg:
            if process.stdout is not None:
                tg.start_soon(_drain, process.stdout, chunks)
            tracking = anyio.CancelScope()
            tg.start_soon(_track, tracker, tracking)
            try:
                with anyio.move_on_after(timeout) as waiting:
                    await process.wait_or_lost()
                timed_out = waiting.cancelled_caught
            finally:
                tracking.cancel()
                with anyio.CancelScope(shield=True):
                    leftovers = await _end_job(process, tracker, grace)
                tg.cancel_scope.deadline = anyio.current_time() + _DRAIN_TIMEOUT
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    duration = anyio.current_time() - started
    announce_end()

    returncode = process.returncode
    assert returncode is not None
    output: str | None = None
    if log is not None:
        end = await anyio.to_thread.run_sync(_read_log_end, log, start_offset)
    else:
        raw = b"".join(chunks)
        end = raw[-_OOM_SCAN_BYTES:]
        output = raw.decode("utf-8", "replace")
    result = ProcessResult(
        args=args,
        returncode=returncode,
        pid=process.pid,
        duration_s=duration,
        timed_out=timed_out,
        cuda_oom=CUDA_OOM_PATTERN.search(end) is not None,
        log_path=log,
        output=output,
        leftovers=leftovers,
        output_tail=_last_lines(end),
    )
    return result.check() if check else result


def job_environment(
    allocation: GPUAllocation | None, env: Mapping[str, str] | None
) -> dict[str, str]:
    """A job's environment: ``os.environ``, the allocation's memory caps, ``env``,
    then the allocation's devices. The caps are defaults that ``env`` may
    override (docs/memory.md); the devices are not."""
    if allocation is None:
        return {**os.environ, **(env or {})}
    return {**os.environ, **allocation.memory_env, **(env or {}), **allocation.device_env}


class _Leader(Protocol):
    """What ending a job needs of its leader (an ``anyio`` process or a ``JobProcess``)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...


async def _end_job(process: _Leader, tracker: JobTracker, grace: float) -> int:
    """Make every process of the job exit; reap the leader. Returns the leftovers count."""
    leader = process.pid
    signalled: set[tuple[int, int]] = set()

    async def others() -> list[ProcInfo]:
        found = await anyio.to_thread.run_sync(tracker.members)
        return [p for p in found if p.pid != leader]

    def group_exists(members: list[ProcInfo]) -> bool:
        # While the leader is unreaped, or any member is still in its group,
        # the group id cannot have been recycled: killpg is safe.
        return process.returncode is None or any(p.pgid == leader for p in members)

    def send(members: list[ProcInfo], signum: int, *, only_new: bool) -> None:
        # The group is signalled once per signal: a job that handles SIGTERM (to save
        # a checkpoint, say) must not get it again each time it starts a process
        # during the grace (a shell's trap, interrupted that way, lost its write).
        if not only_new and group_exists(members):
            killpg_quietly(leader, signum)
        todo = [p for p in members if not (only_new and p.identity in signalled)]
        signal_all(todo, signum)
        signalled.update(p.identity for p in todo)

    members = await others()
    if process.returncode is None or members:
        send(members, signal.SIGTERM, only_new=False)
        deadline = anyio.current_time() + grace
        while True:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            with anyio.move_on_after(min(_POLL_INTERVAL, remaining)):
                await process.wait()
            members = await others()
            if process.returncode is not None and not members:
                break
            new = [p for p in members if p.identity not in signalled]
            if new:
                send(new, signal.SIGTERM, only_new=True)
            if process.returncode is not None:
                await anyio.sleep(min(_POLL_INTERVAL, max(0.0, remaining)))
        if process.returncode is None or members:
            send(members, signal.SIGKILL, only_new=False)
            await process.wait()
        # Done only when two scans in a row, a poll apart, find nobody: a process
        # caught between fork and exec, or between its parent's death and its
        # reparenting, can be missing from one scan. Whoever turns up now was
        # told to go already, so it gets SIGKILL.
        give_up = anyio.current_time() + _KILL_ROUNDS_TIMEOUT
        empty_scans = 0
        while anyio.current_time() < give_up:
            members = await others()
            if members:
                empty_scans = 0
                send(members, signal.SIGKILL, only_new=False)
            else:
                empty_scans += 1
                if empty_scans == 2:
                    break
            await anyio.sleep(_POLL_INTERVAL)
    await process.wait()
    return len({ident for ident in signalled if ident[0] != leader})


async def _drain(stream: anyio.abc.ByteReceiveStream, chunks: list[bytes]) -> None:
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def _track(tracker: JobTracker, scope: anyio.CancelScope) -> None:
    with scope:
        while True:
            await anyio.sleep(_TRACK_INTERVAL)
            await anyio.to_thread.run_sync(tracker.poll)


async def _call_hook(hook: Callable[..., object] | None, *args: object) -> None:
    if hook is None:
        return
    outcome = hook(*args)
    if inspect.isawaitable(outcome):
        await _await(outcome)


async def _await(awaitable: Awaitable[object]) -> None:
    await awaitable


def _log_size(path: Path) -> int:
    """Where this run's part of the log will start; the log's directory must exist."""
    with path.open("ab") as handle:
        return handle.tell()


def _read_log_end(path: Path, start: int) -> bytes:
    """The end of what this run appended to ``path`` (nothing if it cannot be read)."""
    try:
        with path.open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, end - _OOM_SCAN_BYTES))
            return handle.read()
    except OSError:
        return b""


def _last_lines(data: bytes) -> str:
    """The last :data:`TAIL_LINES` lines of ``data``, decoded, trailing blanks dropped."""
    end = data[-_TAIL_BYTES:]
    lines = end.decode("utf-8", "replace").rstrip().splitlines()
    if len(end) < len(data) and len(lines) > 1:
        lines = lines[1:]  # cut somewhere inside: the first line is a fragment
    return "\n".join(lines[-TAIL_LINES:])


def _check_command(cmd: object) -> str | tuple[str, ...]:
    allowed = "a non-empty str (run by /bin/sh) or a non-empty sequence of str arguments"
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ValueError(f"cmd must be {allowed}, got {cmd!r}")
        return cmd
    if isinstance(cmd, (bytes, bytearray)) or not isinstance(cmd, Sequence):
        raise TypeError(f"cmd must be {allowed}, got {cmd!r}")
    args: list[str] = []
    for arg in cmd:
        if not isinstance(arg, (str, os.PathLike)):
            raise TypeError(f"every argument of cmd must be a str or path, got {arg!r}")
        text = os.fspath(arg)
        if not isinstance(text, str):
            raise TypeError(f"every argument of cmd must be a str or path, got {arg!r}")
        args.append(text)
    if not args or not args[0]:
        raise ValueError(f"cmd must be {allowed}, got {cmd!r}")
    return tuple(args)


def _check_env(env: object) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str or None, got {env!r}")
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env must map str to str, got {key!r}: {value!r}")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"env has an invalid variable {key!r}={value!r}")
        checked[key] = value
    return checked


def _check_path(name: str, value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise TypeError(f"{name} must be a non-empty str or path or None, got {value!r}")
    return Path(os.fspath(value))
