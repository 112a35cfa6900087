"""gpupool: share the GPUs of one machine between many concurrent experiments."""

from ._core.backfill import BackfillPolicy as BackfillPolicy
from ._core.errors import AllocationNotHeld as AllocationNotHeld
from ._core.errors import GPUPoolError as GPUPoolError
from ._core.errors import JournalEncodingError as JournalEncodingError
from ._core.errors import JournalError as JournalError
from ._core.errors import JournalInUse as JournalInUse
from ._core.errors import LedgerError as LedgerError
from ._core.errors import PoolClosed as PoolClosed
from ._core.errors import PoolTimeout as PoolTimeout
from ._core.errors import ProviderError as ProviderError
from ._core.errors import UnsatisfiableRequest as UnsatisfiableRequest
from ._core.errors import WouldBlock as WouldBlock
from ._core.growth import LearnedMemory as LearnedMemory
from ._core.holdings import Holding as Holding
from ._core.memory import estimate_memory_mb as estimate_memory_mb
from ._core.model import GPUAllocation as GPUAllocation
from ._core.model import GPUProcess as GPUProcess
from ._core.model import GPUStatistics as GPUStatistics
from ._core.model import GPUStats as GPUStats
from ._core.model import PoolStatistics as PoolStatistics
from ._core.policy import FifoPolicy as FifoPolicy
from ._core.policy import SchedulerView as SchedulerView
from ._core.policy import SchedulingPolicy as SchedulingPolicy
from ._core.request import Resources as Resources
from ._core.results import TaskResult as TaskResult
from ._core.results import TaskStatus as TaskStatus
from ._core.scoring import ScoredGPU as ScoredGPU
from ._core.scoring import Scorer as Scorer
from ._core.waiters import Waiter as Waiter
from ._journal.store import Journal as Journal
from ._ledger.status import machine_status as machine_status
from ._ledger.view import LedgerHolder as LedgerHolder
from ._ledger.view import LedgerWaiter as LedgerWaiter
from ._ledger.view import MachineGPU as MachineGPU
from ._ledger.view import MachineStatus as MachineStatus
from ._ledger.view import OtherProcess as OtherProcess
from ._pool.pool import GPUResourcePool as GPUResourcePool
from ._process.run import ProcessFailed as ProcessFailed
from ._process.run import ProcessResult as ProcessResult
from ._process.run import run_process as run_process
from ._runner.events import TaskEvent as TaskEvent
from ._runner.events import TaskJournal as TaskJournal
from ._runner.executors import CallAbandoned as CallAbandoned
from ._runner.executors import ExecutorStatistics as ExecutorStatistics
from ._runner.executors import run_blocking as run_blocking
from ._runner.progress import ProgressDisplay as ProgressDisplay
from ._runner.runner import ParallelRunner as ParallelRunner
from ._runner.runner import RunnerStatistics as RunnerStatistics
from ._runner.task import TaskHandle as TaskHandle
from ._runner.tuning import OptimizeResult as OptimizeResult
from ._runner.tuning import Strategy as Strategy
from ._runner.tuning import Trial as Trial
from .providers import FakeGPUProvider as FakeGPUProvider
from .providers import GPUProvider as GPUProvider
from .providers import NVMLProvider as NVMLProvider

__all__ = [
    "AllocationNotHeld",
    "BackfillPolicy",
    "CallAbandoned",
    "ExecutorStatistics",
    "FakeGPUProvider",
    "FifoPolicy",
    "GPUAllocation",
    "GPUPoolError",
    "GPUProcess",
    "GPUProvider",
    "GPUResourcePool",
    "GPUStatistics",
    "GPUStats",
    "Holding",
    "Journal",
    "JournalEncodingError",
    "JournalError",
    "JournalInUse",
    "LearnedMemory",
    "LedgerError",
    "LedgerHolder",
    "LedgerWaiter",
    "MachineGPU",
    "MachineStatus",
    "NVMLProvider",
    "OptimizeResult",
    "OtherProcess",
    "ParallelRunner",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "ProcessFailed",
    "ProcessResult",
    "ProgressDisplay",
    "ProviderError",
    "Resources",
    "RunnerStatistics",
    "SchedulerView",
    "SchedulingPolicy",
    "ScoredGPU",
    "Scorer",
    "Strategy",
    "TaskEvent",
    "TaskHandle",
    "TaskJournal",
    "TaskResult",
    "TaskStatus",
    "Trial",
    "UnsatisfiableRequest",
    "Waiter",
    "WouldBlock",
    "estimate_memory_mb",
    "machine_status",
    "run_blocking",
    "run_process",
]
