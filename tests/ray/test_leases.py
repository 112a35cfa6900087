"""The driver's lease book (gpupool.integrations.ray.leases), pure: a Hypothesis state
machine of requests arriving and leaving, nodes granting, refusing and dying, and tasks
releasing leases, with the book's promises as invariants; and the placement rule."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpupool import GPUAllocation, Resources

pytest.importorskip("ray")
from gpupool.integrations.ray.leases import Lease, LeaseBook, Waiter

LEASE_TIME = 10.0
SHAPES = [
    Resources(required_gpus=1),
    Resources(required_gpus=2),
    Resources(required_gpus=1, priority=5),
]


def lease(shape: Resources, since: float, number: int) -> Lease:
    grant = GPUAllocation(number, (0,), (f"GPU-{number}",), 0, True, None, 1)
    return Lease("node", shape, grant, object(), since)


class LeaseBookMachine(RuleBasedStateMachine):
    """The model: the driver's waiting requests in arrival order, the requests sent to
    nodes and not cancelled (per shape), cancelled ones still out, and held leases."""

    def __init__(self) -> None:
        super().__init__()
        self.book = LeaseBook(LEASE_TIME)
        self.now = 0.0
        self.waiting: list[Waiter] = []
        self.sent: dict[Resources, int] = dict.fromkeys(SHAPES, 0)
        self.cancelled: dict[Resources, int] = dict.fromkeys(SHAPES, 0)
        self.held: list[Lease] = []  # leases a task of the driver holds
        self.served: set[int] = set()  # ids of waiters served or failed
        self.numbers = itertools.count(1)

    # -- helpers

    def head(self) -> Waiter | None:
        """The waiter the driver serves first: highest priority, then first come."""
        if not self.waiting:
            return None
        return min(self.waiting, key=lambda w: (-w.shape.priority, w.order[1]))

    def first_of(self, shape: Resources) -> Waiter | None:
        of_shape = [w for w in self.waiting if w.shape == shape]
        return min(of_shape, key=lambda w: w.order[1]) if of_shape else None

    def serve(self, waiter: Waiter, given: Lease) -> None:
        assert waiter in self.waiting, "a lease was given to a request that was not waiting"
        assert waiter.lease is given
        assert waiter.shape == given.shape
        assert all(held is not given for held in self.held), "a lease held twice"
        self.waiting.remove(waiter)
        self.held.append(given)

    def cancel(self, shape: Resources, count: int) -> None:
        assert 0 <= count <= self.sent[shape]
        self.sent[shape] -= count
        self.cancelled[shape] += count

    # -- rules

    @rule(shape=st.sampled_from(SHAPES))
    def arrive(self, shape: Resources) -> None:
        waiter, send = self.book.arrive(shape, "key")
        self.waiting.append(waiter)
        of_shape = sum(1 for w in self.waiting if w.shape == shape)
        # A request is sent exactly when the shape's sent ones do not cover its waiters.
        assert send == (self.sent[shape] < of_shape)
        self.sent[shape] += send

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        waiter = data.draw(st.sampled_from(self.waiting))
        cancel = self.book.leave(waiter)
        self.waiting.remove(waiter)
        left = any(w.shape == waiter.shape for w in self.waiting)
        # Cancelled only when nothing of the shape waits any more, and then all.
        assert cancel == (0 if left else self.sent[waiter.shape])
        self.cancel(waiter.shape, cancel)

    @precondition(lambda self: any(self.sent.values()))
    @rule(data=st.data())
    def node_grants(self, data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from([s for s in SHAPES if self.sent[s]]))
        self.sent[shape] -= 1
        granted = lease(shape, self.now, next(self.numbers))
        waiter = self.book.granted(granted)
        # To the first waiter of its shape, whichever sent it; else back.
        assert waiter is self.first_of(shape)
        if waiter is not None:
            self.serve(waiter, granted)

    @precondition(lambda self: any(self.cancelled.values()))
    @rule(data=st.data())
    def a_cancelled_request_is_granted_anyway(self, data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from([s for s in SHAPES if self.cancelled[s]]))
        self.cancelled[shape] -= 1
        granted = lease(shape, self.now, next(self.numbers))
        assert self.book.granted(granted, cancelled=True) is None  # back to its node

    @precondition(lambda self: any(self.sent.values()))
    @rule(data=st.data())
    def node_refuses(self, data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from([s for s in SHAPES if self.sent[s]]))
        self.sent[shape] -= 1
        expected = self.first_of(shape)
        error = RuntimeError("the node's pool failed")
        waiter = self.book.refused(shape, error)
        assert waiter is expected
        if waiter is not None:
            assert waiter.error is error
            assert waiter.lease is None
            self.waiting.remove(waiter)

    @precondition(lambda self: any(self.sent.values()))
    @rule(data=st.data())
    def node_dies(self, data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from([s for s in SHAPES if self.sent[s]]))
        self.sent[shape] -= 1
        again = self.book.lost(shape)
        of_shape = sum(1 for w in self.waiting if w.shape == shape)
        assert again == (self.sent[shape] < of_shape)
        self.sent[shape] += again

    @precondition(lambda self: self.held)
    @rule(data=st.data(), worker_ok=st.booleans(), age=st.sampled_from([0.0, 3.0, 10.0, 50.0]))
    def task_done(self, data: st.DataObject, worker_ok: bool, age: float) -> None:
        done = data.draw(st.sampled_from(self.held))
        self.held.remove(done)
        done.worker_ok = worker_ok
        self.now = max(self.now, done.since + age)
        head = self.head()
        handing = self.book.released(done, self.now)
        young = self.now - done.since < LEASE_TIME
        if worker_ok and young and head is not None and head.shape == done.shape:
            # Handed on only to the driver's next request, and only of its shape.
            assert handing.to is head
            assert not handing.renew
            assert handing.cancel == 0
            self.serve(head, done)
            return
        assert handing.to is None
        waiters_of_shape = any(w.shape == done.shape for w in self.waiting)
        # Back to its node; asked for again there exactly when its shape still waits.
        assert handing.renew == waiters_of_shape
        if handing.renew:
            assert handing.cancel == 0
            self.sent[done.shape] += 1
        else:
            assert handing.cancel == self.sent[done.shape]
            self.cancel(done.shape, handing.cancel)

    @rule()
    def time_passes(self) -> None:
        self.now += 4.0

    # -- invariants

    @invariant()
    def every_waiter_is_covered_by_a_sent_request(self) -> None:
        # No request waits with nothing on any node that could ever grant it.
        for shape in SHAPES:
            of_shape = sum(1 for w in self.waiting if w.shape == shape)
            assert self.sent[shape] >= of_shape, (shape, self.sent[shape], of_shape)

    @invariant()
    def the_book_counts_what_the_model_counts(self) -> None:
        assert {s: n for s, n in self.book.sent.items() if n} == {
            s: n for s, n in self.sent.items() if n
        }
        assert list(self.book.waiters) == sorted(
            self.waiting, key=lambda w: (-w.shape.priority, w.order[1])
        )
        for shape in SHAPES:
            assert self.book.waiting(shape) == sum(1 for w in self.waiting if w.shape == shape)


TestLeaseBook = LeaseBookMachine.TestCase
TestLeaseBook.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_a_served_waiter_cannot_leave_without_its_lease() -> None:
    book = LeaseBook(LEASE_TIME)
    shape = SHAPES[0]
    waiter, send = book.arrive(shape)
    assert send
    assert book.granted(lease(shape, 0.0, 1)) is waiter
    with pytest.raises(ValueError, match="released"):
        book.leave(waiter)


def test_an_answer_to_a_request_never_sent_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no request of shape"):
        LeaseBook(LEASE_TIME).granted(lease(SHAPES[0], 0.0, 1))


def test_lease_time_zero_hands_nothing_on() -> None:
    book = LeaseBook(0.0)
    shape = SHAPES[0]
    first, _ = book.arrive(shape)
    book.granted(lease(shape, 0.0, 1))
    book.arrive(shape)
    assert first.lease is not None
    handing = book.released(first.lease, 0.0)
    assert handing.to is None
    assert handing.renew
