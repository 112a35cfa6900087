"""``on_process_started``: how ``run_process`` tells the pool and the journal that a job started.

Two layers want to know of every process ``run_process`` starts, and
``_process`` may import neither of them (they are siblings in the import
contract of ``pyproject.toml``):

* the **pool** that granted the allocation, so that the job's GPU memory is
  covered by the allocation's reservation instead of counted as foreign, and
  so that a released GPU settles until the job has left it;
* the **journal** of the runner task the code runs for, CPU-only tasks
  included, so that a runner that takes over after a crash can end the
  process groups the dead one left behind.

Each learns through a hook, an ``OnProcessStarted`` (``gpupool._core.model``):
a function of a ``StartedProcess`` (pid = process group = session, and the
allocation), which may return a function to call once the process has ended
and been reaped. Where each hook comes from follows from who knows what:

* the pool's hook is **carried by the allocation**
  (``GPUAllocation.on_process_started``, stamped on every grant, as the pool's
  id is): the allocation is the one thing ``run_process`` is handed, and code
  that holds one (``async with pool.allocation() as alloc``) has no other
  link to the pool. ``run_process(pool=...)`` given explicitly replaces it.
* the journal's hook is a **context-scoped observer**, set by the runner
  around each task's function (:func:`observing` or :func:`observe` /
  :func:`stop_observing`): only the runner knows which task, and so which
  key, the code runs for. It follows the task into worker threads (anyio
  copies the context) and into tasks the function spawns.

There is no module-global registry: a hook lives exactly as long as the
allocation or the task that carries it. On start, the context's observers
are told first (outermost first), then the allocation's pool; a hook that
raises ends the job and the error propagates. Once the job is over and
reaped, the functions they returned are called in reverse order. When
``run_process`` raises instead (cancelled, a hook failed) they are not
called: the task ends with the error, and the journal clears every process
group of a task when it records the task's final state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token

from .._core.model import OnProcessStarted, StartedProcess

__all__ = ["announce_start", "observe", "observing", "stop_observing"]

#: The observers of the current context, outermost first.
_observers: ContextVar[tuple[OnProcessStarted, ...]] = ContextVar(
    "gpupool_on_process_started", default=()
)


def observe(hook: OnProcessStarted) -> Token[tuple[OnProcessStarted, ...]]:
    """Tell ``hook`` of every process started in this context from now on.

    Returns the token for :func:`stop_observing`, which must be called in
    the same context (the same task).
    """
    return _observers.set((*_observers.get(), hook))


def stop_observing(token: Token[tuple[OnProcessStarted, ...]]) -> None:
    """Undo the :func:`observe` that returned ``token``."""
    _observers.reset(token)


@contextlib.contextmanager
def observing(hook: OnProcessStarted) -> Iterator[None]:
    """``observe(hook)`` for the body of a ``with`` block."""
    token = observe(hook)
    try:
        yield
    finally:
        stop_observing(token)


def announce_start(process: StartedProcess, *, allocation_hook: bool = True) -> Callable[[], None]:
    """Tell every hook that applies that ``process`` started; return what tells them it ended.

    The hooks are the context's observers, then (unless ``allocation_hook``
    is false: the caller was given a pool) the hook of ``process.allocation``.
    """
    hooks = _observers.get()
    carried = process.allocation.on_process_started if process.allocation is not None else None
    if allocation_hook and carried is not None:
        hooks = (*hooks, carried)
    ended: list[Callable[[], object]] = []
    for hook in hooks:
        then = hook(process)
        if then is not None:
            ended.append(then)

    def announce_end() -> None:
        for then in reversed(ended):
            then()

    return announce_end
