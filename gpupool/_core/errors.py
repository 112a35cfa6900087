"""The exceptions gpupool raises.

Each one also subclasses the built-in it really is (``PoolTimeout`` is a
``TimeoutError``, ``UnsatisfiableRequest`` a ``ValueError``), so callers that
do not know gpupool can still catch them sensibly.
"""

from __future__ import annotations

__all__ = [
    "AllocationNotHeld",
    "GPUPoolError",
    "JournalEncodingError",
    "JournalError",
    "JournalInUse",
    "LedgerError",
    "PoolClosed",
    "PoolTimeout",
    "ProviderError",
    "UnsatisfiableRequest",
    "WouldBlock",
]


class GPUPoolError(Exception):
    """Base class of every error gpupool raises on purpose."""


class PoolTimeout(GPUPoolError, TimeoutError):
    """An ``acquire`` did not get its GPUs within its ``timeout``."""


class UnsatisfiableRequest(GPUPoolError, ValueError):
    """No GPU of the pool could ever satisfy the request, so waiting would hang."""


class PoolClosed(GPUPoolError):
    """The pool is closed (or closing); nothing more is granted."""


class AllocationNotHeld(GPUPoolError):
    """The allocation was already released, or belongs to another pool."""


class ProviderError(GPUPoolError):
    """The GPU provider (NVML, usually) cannot be used; the message says what to do."""


class WouldBlock(GPUPoolError):
    """``acquire_nowait`` could not grant at once (GPUs busy, or others queued first)."""


class JournalError(GPUPoolError):
    """A task journal cannot be opened or used (not a journal, not writable, ...)."""


class JournalInUse(JournalError):
    """Another live process (or another runner in this one) owns the journal."""


class JournalEncodingError(JournalError, TypeError):
    """A value has no canonical JSON form, so it cannot key a task or be stored."""


class LedgerError(GPUPoolError):
    """The machine-wide ledger cannot be used here; the message says why and what to do."""
