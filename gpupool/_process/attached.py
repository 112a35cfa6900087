"""``run_attached``: a command on an allocation's GPUs that keeps the caller's terminal.

For ``gpupool reserve -- jupyter lab``: unlike :func:`~gpupool.run_process`,
the command inherits stdin, stdout and stderr (a notebook server prints its
URL, a REPL reads what is typed), and nothing is captured. Everything else is
``run_process``'s: the command leads a session of its own (so its pid is its
process group and session id, the ledger records it as the allocation's job
through the allocation's hook, and a holder killed with ``kill -9`` has its
job ended by whoever reaps it), and it is ended the same way, SIGTERM to
every process of the job, the grace period, then SIGKILL (``run._end_job``),
when the caller is cancelled.

Being in a session of its own, the command has no controlling terminal:
reading and writing the inherited terminal work, but the terminal's signals
(Ctrl-C) go to the caller, which forwards what it wants to the job's group
(``gpupool reserve`` forwards SIGINT, so Ctrl-C reaches the command as it
would in the foreground).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence

import anyio

from .._core.checks import check_finite_seconds, check_instance
from .._core.model import GPUAllocation, StartedProcess
from .proctree import TOKEN_VARIABLE, JobTracker
from .run import DEFAULT_GRACE_PERIOD, _end_job, _track, job_environment
from .started import announce_start

__all__ = ["run_attached"]


async def run_attached(
    args: Sequence[str],
    *,
    allocation: GPUAllocation,
    env: Mapping[str, str] | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    on_start: Callable[[int], object] | None = None,
) -> int:
    """Run ``args`` (no shell) on ``allocation``'s GPUs with the caller's stdio; its return code.

    The environment is ``run_process``'s (``run.job_environment``):
    ``os.environ``, a shared allocation's memory caps, ``env``, then the
    allocation's devices.
    ``on_start(pid)`` is called once the process exists, before the
    ``on_process_started`` hooks. The return code follows :mod:`subprocess`
    (``-N``: ended by signal N). Starting a command that does not exist
    raises the ``OSError`` (``FileNotFoundError``, ``PermissionError``).
    """
    check_instance("allocation", allocation, GPUAllocation, "a GPUAllocation")
    grace = check_finite_seconds("grace_period", grace_period)
    command = [str(arg) for arg in args]
    if not command or not command[0]:
        raise ValueError(f"args must be a non-empty command, got {args!r}")
    token = uuid.uuid4().hex
    child_env = {**job_environment(allocation, env), TOKEN_VARIABLE: token}
    process = await anyio.open_process(
        command, stdin=None, stdout=None, stderr=None, env=child_env, start_new_session=True
    )
    tracker = JobTracker(process.pid, token)
    try:
        try:
            if on_start is not None:
                on_start(process.pid)
            announce_end = announce_start(StartedProcess(process.pid, allocation))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _end_job(process, tracker, grace)
            raise
        async with anyio.create_task_group() as tg:
            tracking = anyio.CancelScope()
            tg.start_soon(_track, tracker, tracking)
            try:
                await process.wait()
            finally:
                tracking.cancel()
                with anyio.CancelScope(shield=True):
                    await _end_job(process, tracker, grace)
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    announce_end()
    returncode = process.returncode
    assert returncode is not None
    return returncode
