"""The driver's leases: GPUs a node granted, kept for the driver's next task (pure).

A task on a cluster could cost the driver three calls to Ray: the node
agent's ``acquire``, the worker's ``call`` and the agent's ``release``. Each
costs about as much CPU as a whole trivial task of plain Ray (docs/ray.md),
so the driver keeps what a node granted as a **lease** (the node's
allocation and the worker process that runs its tasks) and hands it
straight to its next request of the same shape, as Ray's own task
submitter keeps worker leases. A task that reuses a lease costs one call,
the worker's.

Handing on must not undo what the node's pool decides, so the rules are:

- A lease goes only to the **driver's next request** in the driver's own
  order (higher ``priority`` first, then first come first served), and
  only if that request has exactly the lease's shape (the same
  :class:`~gpupool.Resources`). Otherwise it goes back to its node, whose
  pool chooses among everything waiting there, the driver's other
  requests included.
- A lease older than ``lease_time`` seconds goes back to its node at its
  next release, so that other processes waiting for those GPUs (through
  the node's machine-wide ledger, say) wait at most about ``lease_time``
  plus one task. ``lease_time=0`` hands nothing on: every task is granted
  by its node.
- A lease whose worker is gone (ended after a timeout, or crashed) goes
  back, so its node gives its next grant a fresh worker.
- A lease that goes back while requests of its shape wait is **renewed**:
  its node is asked for the shape again right after, so a request
  waits where those GPUs are (else they could stay idle while the driver's
  requests wait on nodes whose GPUs are all leased).

Each request that cannot be served from a lease waits on a node: the book
keeps as many requests sent to nodes as there are driver requests of that
shape waiting, and a node's grant goes to the first waiting request of its
shape, whichever one sent it. Requests sent for requests that a lease
served meanwhile stay queued on their nodes for the next ones (sending and
cancelling one per task would cost two calls); they are cancelled once
nothing of their shape waits and a lease of it has just gone back, or the
last waiter of the shape gave up. A cancelled request is no longer
counted; if its grant comes anyway, it goes back.

This module decides; ``cluster.py`` does what it decides (the Ray calls).
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from typing import Any, final

import attrs

from ..._core.model import GPUAllocation
from ..._core.request import Resources

__all__ = ["Handing", "Lease", "LeaseBook", "Waiter"]


@final
@attrs.define(eq=False)
class Lease:
    """A node's grant as the driver holds it: where, for what shape, which worker runs it."""

    node: str
    shape: Resources
    grant: GPUAllocation  # as the node's pool granted it
    worker: Any  # the worker actor's handle
    #: When the node granted it (the clock of whoever made it).
    since: float
    #: False once the driver ended the worker (a timeout, a cancellation, a crash).
    worker_ok: bool = True
    #: Tokens of the task functions sent to its worker (cluster.py).
    functions: set[int] = attrs.Factory(set)
    #: Whether ``grant`` was sent to its worker (with the lease's first call).
    sent_grant: bool = False


@final
@attrs.frozen
class Handing:
    """Where a lease goes when a task is done with it (:meth:`LeaseBook.released`)."""

    #: The waiter it is handed to; None: back to its node.
    to: Waiter | None
    #: Back to its node, which is asked for its shape again right after (that
    #: request counted as sent).
    renew: bool
    #: How many of the other sent requests of its shape to cancel (no longer counted).
    cancel: int


@final
@attrs.define(eq=False)
class Waiter:
    """One of the driver's requests, waiting for a lease."""

    shape: Resources
    order: tuple[int, int]  # (-priority, arrival): lower is served first
    #: What the node's pool is told a request is for (the runner's task key).
    experiment_id: str | None = None
    #: The lease it was given, once given one.
    lease: Lease | None = None
    #: Why it cannot be served (a node's error), once it cannot.
    error: BaseException | None = None


@final
class LeaseBook:
    """Who gets which lease, and how many requests wait on the nodes, per shape."""

    def __init__(self, lease_time: float) -> None:
        self.lease_time = lease_time
        self._arrivals = itertools.count()
        self._queue: list[Waiter] = []  # sorted by Waiter.order
        self._waiting: Counter[Resources] = Counter()
        #: Requests sent to nodes and not answered yet, per shape.
        self.sent: Counter[Resources] = Counter()

    @property
    def waiters(self) -> tuple[Waiter, ...]:
        return tuple(self._queue)

    def waiting(self, shape: Resources) -> int:
        return self._waiting[shape]

    def arrive(self, shape: Resources, experiment_id: str | None = None) -> tuple[Waiter, bool]:
        """A new request; and whether a request must be sent to a node for it."""
        waiter = Waiter(shape, (-shape.priority, next(self._arrivals)), experiment_id)
        bisect.insort(self._queue, waiter, key=lambda w: w.order)
        self._waiting[shape] += 1
        send = self.sent[shape] < self._waiting[shape]
        if send:
            self.sent[shape] += 1
        return waiter, send

    def leave(self, waiter: Waiter) -> int:
        """``waiter`` gave up unserved; how many of its shape's sent requests to cancel."""
        if waiter.lease is not None:
            raise ValueError("a served waiter leaves through released(), with its lease")
        if not self._drop(waiter):
            return 0
        return self._surplus(waiter.shape)

    def granted(self, lease: Lease, *, cancelled: bool = False) -> Waiter | None:
        """A node answered a sent request with ``lease``: the waiter it goes to, or
        None to give it back (nothing of its shape waits, or the request was
        cancelled and so no longer counted)."""
        if cancelled:
            return None
        self._answered(lease.shape)
        return self._hand_to(self.first_of(lease.shape), lease)

    def refused(self, shape: Resources, error: BaseException) -> Waiter | None:
        """A node answered a sent (not cancelled) request with ``error``: the
        waiter that fails with it, if one of its shape still waits."""
        self._answered(shape)
        waiter = self.first_of(shape)
        if waiter is not None:
            self._drop(waiter)
            waiter.error = error
        return waiter

    def lost(self, shape: Resources) -> bool:
        """A sent (not cancelled) request's node is gone; whether to send it again
        elsewhere."""
        self._answered(shape)
        send = self.sent[shape] < self._waiting[shape]
        if send:
            self.sent[shape] += 1
        return send

    def released(self, lease: Lease, now: float) -> Handing:
        """The driver's task is done with ``lease``: where it goes."""
        head = self._queue[0] if self._queue else None
        keep = (
            lease.worker_ok
            and now - lease.since < self.lease_time
            and head is not None
            and head.shape == lease.shape
        )
        if keep:
            return Handing(self._hand_to(head, lease), renew=False, cancel=0)
        shape = lease.shape
        if not self._waiting[shape]:
            # Nothing of its shape waits: the sent requests are surplus, each would
            # be granted only to be given back in turn.
            return Handing(None, renew=False, cancel=self._surplus(shape))
        # Back to its node, which is asked again for the shape right after: a
        # request of it must wait where these GPUs are, or they could stay idle
        # while the driver's requests wait on nodes whose GPUs are all leased. No
        # other request is cancelled for it: the node grants its GPUs to the
        # oldest of the driver's requests there, so the count stays as it was.
        self.sent[shape] += 1
        return Handing(None, renew=True, cancel=0)

    def _hand_to(self, waiter: Waiter | None, lease: Lease) -> Waiter | None:
        if waiter is not None:
            self._drop(waiter)
            waiter.lease = lease
        return waiter

    def first_of(self, shape: Resources) -> Waiter | None:
        """The waiter of ``shape`` served first."""
        return next((w for w in self._queue if w.shape == shape), None)

    def _drop(self, waiter: Waiter) -> bool:
        index = bisect.bisect_left(self._queue, waiter.order, key=lambda w: w.order)
        if index == len(self._queue) or self._queue[index] is not waiter:
            return False
        del self._queue[index]
        self._waiting[waiter.shape] -= 1
        if not self._waiting[waiter.shape]:
            del self._waiting[waiter.shape]
        return True

    def _answered(self, shape: Resources) -> None:
        if self.sent[shape] <= 0:
            raise ValueError(f"no request of shape {shape!r} was sent")
        self.sent[shape] -= 1
        if not self.sent[shape]:
            del self.sent[shape]

    def _surplus(self, shape: Resources) -> int:
        """Stop counting, and have the caller cancel, the sent requests of a shape
        of which nothing waits any more."""
        if self._waiting[shape]:
            return 0
        return self.sent.pop(shape, 0)
