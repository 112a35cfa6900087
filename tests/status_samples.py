"""Hand-made :class:`MachineStatus` values for the ``gpupool status`` tests.

A module of its own so that a child process (the ``--watch`` tests run the
command for real) builds exactly the values the test process checks against.
Times are fixed: :data:`NOW` is 2024-05-01 13:51:07.25 UTC, and the tests
run with ``TZ=UTC``, so every clock time printed is known.
"""

from __future__ import annotations

from typing import Any

from gpupool._ledger.view import (
    LedgerHolder,
    LedgerWaiter,
    MachineGPU,
    MachineStatus,
    OtherProcess,
)
from gpupool.providers.fake import fake_uuid

NOW = 1_714_571_467.25
UUIDS = tuple(fake_uuid(i) for i in range(4))
#: A GPU this process does not see (another CUDA_VISIBLE_DEVICES mask).
HIDDEN_UUID = fake_uuid(7)
LEDGER = "/dev/shm/gpupool-test-ledger"


def holder(id: int, pid: int, gpus: tuple[int, ...], **fields: Any) -> LedgerHolder:
    values: dict[str, Any] = {
        "id": id,
        "kind": "allocation",
        "pid": pid,
        "same_pid_namespace": True,
        "uid": 1000,
        "user": "alice",
        "command": "/usr/bin/python3 /home/alice/sweep/train.py --lr 0.1 --epochs 100",
        "gpu_uuids": tuple(UUIDS[i] for i in gpus),
        "memory_mb": 81_920,
        "exclusive": True,
        "since": NOW - 720,
    }
    values.update(fields)
    return LedgerHolder(**values)


def gpu(index: int, holders: tuple[LedgerHolder, ...] = (), **fields: Any) -> MachineGPU:
    values: dict[str, Any] = {
        "index": index,
        "uuid": UUIDS[index],
        "name": "NVIDIA A100-SXM4-80GB",
        "memory_total_mb": 81_920,
        "memory_used_mb": 0,
        "memory_reserved_mb": 0,
        "utilization_pct": 0.0,
        "healthy": True,
        "health_detail": None,
        "holders": holders,
        "other_processes": (),
    }
    values.update(fields)
    return MachineGPU(**values)


#: alice: GPUs 0 and 1, exclusive, for 12 minutes, a job key.
ALICE = holder(7, 4242, (0, 1), key="sweep-17")
#: bob: a reservation on GPU 2, shared, 2h 3m old, ending in 1h 57m.
BOB = holder(
    12,
    777,
    (2,),
    kind="reservation",
    user="bob",
    uid=1001,
    command="jupyter lab --no-browser",
    memory_mb=20_480,
    exclusive=False,
    since=NOW - 7380,
    until=NOW + 7020,
)
#: carol: shared on GPU 2 from a container (another PID namespace).
CAROL = holder(
    13,
    31,
    (2,),
    user="carol",
    uid=1002,
    same_pid_namespace=False,
    command="python -m torch.distributed.run train.py",
    memory_mb=8_000,
    exclusive=False,
    since=NOW - 45,
)
#: dave: GPU 3 (lost) and one GPU this process cannot see; died, jobs still run.
DAVE = holder(
    15,
    5000,
    (3,),
    user="dave",
    uid=1003,
    gpu_uuids=(UUIDS[3], HIDDEN_UUID),
    orphaned=True,
    job_pids=(5001, 5002),
    command="gpupool run jobs.txt",
    since=NOW - 90_000,
    key="job-3",
)

BIG = LedgerWaiter(
    ticket=3,
    pid=9001,
    same_pid_namespace=True,
    uid=1002,
    user="carol",
    command="python big.py --gpus 4",
    required_gpus=4,
    min_memory_mb=0,
    exclusive=True,
    priority=0,
    gpu_uuids=UUIDS,
    since=NOW - 182,
)
SMALL = LedgerWaiter(
    ticket=4,
    pid=9002,
    same_pid_namespace=True,
    uid=1000,
    user="alice",
    command="python eval.py",
    required_gpus=1,
    min_memory_mb=4_000,
    exclusive=False,
    priority=5,
    gpu_uuids=(UUIDS[0], UUIDS[2]),
    since=NOW - 5,
    key="eval-1",
)

#: Everything at once: holders of every kind, a queue, other and vanished processes.
BUSY = MachineStatus(
    ledger=LEDGER,
    taken_at=NOW,
    gpus=(
        gpu(0, (ALICE,), memory_used_mb=40_000, utilization_pct=63.0),
        gpu(
            1,
            (ALICE,),
            memory_used_mb=39_000,
            utilization_pct=55.0,
            other_processes=(OtherProcess(5151, 1_200, "python3", True),),
        ),
        gpu(
            2,
            (BOB, CAROL),
            memory_used_mb=30_000,
            memory_reserved_mb=28_480,
            utilization_pct=None,
            other_processes=(OtherProcess(6161, 2_048, None, False),),
        ),
        gpu(
            3,
            (DAVE,),
            memory_used_mb=70_000,
            healthy=False,
            health_detail="GPU is lost",
        ),
    ),
    holders=(DAVE, BOB, ALICE, CAROL),
    waiters=(BIG, SMALL),
)

#: Two idle fake GPUs, nobody in the ledger.
IDLE = MachineStatus(
    ledger=LEDGER,
    taken_at=NOW,
    gpus=(
        gpu(0, name="Fake GPU 0", memory_total_mb=24_576),
        gpu(1, name="Fake GPU 1", memory_total_mb=24_576),
    ),
    holders=(),
    waiters=(),
)


def at(status: MachineStatus, taken_at: float) -> MachineStatus:
    """``status`` as seen at another moment (the watch tests tell refreshes apart by it)."""
    import attrs

    return attrs.evolve(status, taken_at=taken_at)
