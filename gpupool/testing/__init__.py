"""Helpers for testing code that uses gpupool, with no GPU in sight (docs/testing.md).

* :class:`FakeGPUProvider` stands in for NVML (usage, processes, faults set by
  the test); :class:`FakeGPUs` describes fake GPUs as one value, as the pytest
  plugin's ``fake_gpus`` fixture takes them; :func:`fake_uuid` is the UUID of
  fake GPU ``i``.
* Hypothesis strategies (:func:`gpu_snapshots`, :func:`request_kwargs`,
  :func:`resources`, :func:`workloads`) for property-based and state-machine
  tests; they need ``hypothesis``, imported only when a strategy is made.
* :func:`virtual_clock` runs an anyio test on trio's ``MockClock``.

The pytest plugin itself (fixtures ``fake_gpus``, ``gpu_pool``, ``gpu_runner``,
``gpu_lease``; the ``gpus`` marker) is :mod:`gpupool.testing.plugin`, which
pytest loads by itself wherever gpupool is installed (``-p no:gpupool`` turns
it off). Importing this package needs neither pytest nor Hypothesis.
"""

from ..providers.fake import FakeGPUProvider as FakeGPUProvider
from ..providers.fake import fake_uuid as fake_uuid
from .clock import virtual_clock as virtual_clock
from .fakes import FakeGPUs as FakeGPUs
from .strategies import gpu_snapshots as gpu_snapshots
from .strategies import request_kwargs as request_kwargs
from .strategies import resources as resources
from .strategies import workloads as workloads

__all__ = [
    "FakeGPUProvider",
    "FakeGPUs",
    "fake_uuid",
    "gpu_snapshots",
    "request_kwargs",
    "resources",
    "virtual_clock",
    "workloads",
]
