"""gpupool: share the GPUs of one machine between many concurrent experiments."""

from ._backfill import BackfillPolicy as BackfillPolicy
from ._errors import AllocationNotHeld as AllocationNotHeld
from ._errors import GPUPoolError as GPUPoolError
from ._errors import JournalEncodingError as JournalEncodingError
from ._errors import JournalError as JournalError
from ._errors import JournalInUse as JournalInUse
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolTimeout as PoolTimeout
from ._errors import ProviderError as ProviderError
from ._errors import UnsatisfiableRequest as UnsatisfiableRequest
from ._errors import WouldBlock as WouldBlock
from ._events import TaskEvent as TaskEvent
from ._events import TaskJournal as TaskJournal
from ._executors import CallAbandoned as CallAbandoned
from ._executors import ExecutorStatistics as ExecutorStatistics
from ._executors import run_blocking as run_blocking
from ._journal import Journal as Journal
from ._memory import estimate_memory_mb as estimate_memory_mb
from ._model import GPUAllocation as GPUAllocation
from ._model import GPUProcess as GPUProcess
from ._model import GPUStatistics as GPUStatistics
from ._model import GPUStats as GPUStats
from ._model import PoolStatistics as PoolStatistics
from ._policy import FifoPolicy as FifoPolicy
from ._policy import SchedulingPolicy as SchedulingPolicy
from ._pool import GPUResourcePool as GPUResourcePool
from ._process import ProcessFailed as ProcessFailed
from ._process import ProcessResult as ProcessResult
from ._process import run_process as run_process
from ._progress import ProgressDisplay as ProgressDisplay
from ._runner import ParallelRunner as ParallelRunner
from ._runner import RunnerStatistics as RunnerStatistics
from ._task import TaskHandle as TaskHandle
from ._tasks import TaskResult as TaskResult
from ._tasks import TaskStatus as TaskStatus
from ._tuning import OptimizeResult as OptimizeResult
from ._tuning import Strategy as Strategy
from ._tuning import Trial as Trial
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
    "Journal",
    "JournalEncodingError",
    "JournalError",
    "JournalInUse",
    "NVMLProvider",
    "OptimizeResult",
    "ParallelRunner",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "ProcessFailed",
    "ProcessResult",
    "ProgressDisplay",
    "ProviderError",
    "RunnerStatistics",
    "SchedulingPolicy",
    "Strategy",
    "TaskEvent",
    "TaskHandle",
    "TaskJournal",
    "TaskResult",
    "TaskStatus",
    "Trial",
    "UnsatisfiableRequest",
    "WouldBlock",
    "estimate_memory_mb",
    "run_blocking",
    "run_process",
]
