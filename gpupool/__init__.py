"""gpupool: share the GPUs of one machine between many concurrent experiments."""

from ._backfill import BackfillPolicy as BackfillPolicy
from ._errors import AllocationNotHeld as AllocationNotHeld
from ._errors import GPUPoolError as GPUPoolError
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolTimeout as PoolTimeout
from ._errors import ProviderError as ProviderError
from ._errors import UnsatisfiableRequest as UnsatisfiableRequest
from ._errors import WouldBlock as WouldBlock
from ._model import GPUAllocation as GPUAllocation
from ._model import GPUProcess as GPUProcess
from ._model import GPUStatistics as GPUStatistics
from ._model import GPUStats as GPUStats
from ._model import PoolStatistics as PoolStatistics
from ._policy import FifoPolicy as FifoPolicy
from ._policy import SchedulingPolicy as SchedulingPolicy
from ._pool import GPUResourcePool as GPUResourcePool
from ._tasks import TaskResult as TaskResult
from ._tasks import TaskStatus as TaskStatus
from .providers import FakeGPUProvider as FakeGPUProvider
from .providers import GPUProvider as GPUProvider

__all__ = [
    "AllocationNotHeld",
    "BackfillPolicy",
    "FakeGPUProvider",
    "FifoPolicy",
    "GPUAllocation",
    "GPUPoolError",
    "GPUProcess",
    "GPUProvider",
    "GPUResourcePool",
    "GPUStatistics",
    "GPUStats",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "ProviderError",
    "SchedulingPolicy",
    "TaskResult",
    "TaskStatus",
    "UnsatisfiableRequest",
    "WouldBlock",
]
