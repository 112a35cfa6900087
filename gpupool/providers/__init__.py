"""GPU providers: where the pool learns what the GPUs look like."""

from ._base import GPUProvider as GPUProvider
from .fake import FakeGPUProvider as FakeGPUProvider
from .nvml import NVMLProvider as NVMLProvider

__all__ = ["FakeGPUProvider", "GPUProvider", "NVMLProvider"]
