"""Hold a PyTorch process to the memory its shared allocation reserved.

Needs PyTorch (the ``torch`` extra, ``pip install 'gpupool[torch]'``, or the
build for your CUDA from pytorch.org). Environment variables cannot cap
PyTorch's allocator, so a job calls this itself, once, before it allocates:

>>> from gpupool.integrations.torch import limit_memory   # doctest: +SKIP
>>> limit_memory(allocation)                              # doctest: +SKIP
{0: 0.3333}

For each of the allocation's GPUs that PyTorch sees, it calls
``torch.cuda.set_per_process_memory_fraction(fraction, device)`` with the
reservation's share of that GPU's total memory, rounded down
(``gpupool._core.model.memory_fraction``). What that enforces, and what it
does not (the CUDA context, cuDNN workspaces, NCCL buffers), is in
docs/memory.md.

Which PyTorch device is which GPU: in a job's own process (started by
``run_process``, whose ``CUDA_VISIBLE_DEVICES`` lists the allocation's GPUs
and nothing else), device ``i`` is the allocation's GPU ``i``; in any other
process the devices are matched by UUID. ``devices=`` names them instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .._core.checks import check_instance, check_int
from .._core.model import GPUAllocation, memory_fraction

__all__ = ["limit_memory"]

_MIB = 1024 * 1024


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "gpupool.integrations.torch needs PyTorch, which is not installed; install "
            "the extra, pip install 'gpupool[torch]', or the build for your CUDA from "
            "pytorch.org"
        ) from exc
    return torch


def limit_memory(
    allocation: GPUAllocation, *, devices: Sequence[int] | None = None
) -> dict[int, float]:
    """Cap PyTorch's caching allocator on each GPU of a shared ``allocation`` at its reservation.

    Returns what was set, PyTorch device index to fraction of that GPU's
    total memory. Sets nothing, and returns ``{}``, for an **exclusive**
    allocation (its process owns the GPUs) and where **CUDA is not
    available** (a laptop, fake GPUs, a CPU build of PyTorch): the same
    script runs there unchanged, and there is no GPU memory to cap.

    ``devices``: the PyTorch device index of each of the allocation's GPUs,
    in the order of ``allocation.gpu_indices``; by default they are found as
    the module docstring says. Raises ``ImportError`` without PyTorch, and
    ``RuntimeError`` when CUDA is available but none of the allocation's GPUs
    can be found among PyTorch's devices.
    """
    check_instance("allocation", allocation, GPUAllocation, "a GPUAllocation")
    if devices is not None:
        if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
            raise TypeError(
                f"devices must be a sequence of device indices or None, got {devices!r}"
            )
        for entry in devices:
            check_int("devices entry", entry, 0)
        if len(devices) != len(allocation.gpu_indices):
            raise ValueError(
                f"devices must name one PyTorch device per GPU of the allocation "
                f"({len(allocation.gpu_indices)}), got {list(devices)!r}"
            )
    torch = _import_torch()
    if allocation.exclusive or not torch.cuda.is_available():
        return {}
    mapping: list[int | None] = (
        list(devices) if devices is not None else _devices_of(torch, allocation)
    )
    applied: dict[int, float] = {}
    for position, device in enumerate(mapping):
        if device is None:
            continue
        fraction = memory_fraction(
            allocation.memory_mb, _total_mb(torch, allocation, position, device)
        )
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        applied[device] = fraction
    return applied


def _devices_of(torch: Any, allocation: GPUAllocation) -> list[int | None]:
    """The PyTorch device of each of the allocation's GPUs (None where not visible)."""
    count = int(torch.cuda.device_count())
    own = allocation.device_env["CUDA_VISIBLE_DEVICES"]
    if os.environ.get("CUDA_VISIBLE_DEVICES") == own and count == len(allocation.gpu_uuids):
        return list(range(count))
    by_uuid = {_uuid_of(torch, device): device for device in range(count)}
    found: list[int | None] = [by_uuid.get(uuid) for uuid in allocation.gpu_uuids]
    if all(device is None for device in found):
        raise RuntimeError(
            f"none of the allocation's GPUs ({', '.join(allocation.gpu_uuids)}) is among "
            f"PyTorch's {count} CUDA device(s); run the job with "
            "gpupool.run_process(..., allocation=...), or pass devices="
        )
    return found


def _uuid_of(torch: Any, device: int) -> str:
    """A device's UUID as NVML writes it (``GPU-...``); PyTorch drops the prefix."""
    text = str(getattr(torch.cuda.get_device_properties(device), "uuid", ""))
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _total_mb(torch: Any, allocation: GPUAllocation, position: int, device: int) -> int:
    """The GPU's total memory: as the pool saw it, else as PyTorch reports it."""
    totals = allocation.gpu_memory_total_mb
    if position < len(totals) and totals[position] > 0:
        return totals[position]
    return int(torch.cuda.get_device_properties(device).total_memory) // _MIB
