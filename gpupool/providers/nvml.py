"""The real provider: what NVML (the NVIDIA driver's management library) reports.

It talks to NVML through the official ``nvidia-ml-py`` bindings (module
``pynvml``, the ``gpupool[nvml]`` extra), imported on first use so that
``import gpupool`` works on machines without them.

How NVML errors are treated, by kind (codes from ``nvml.h``):

* library-wide (not initialised, driver not loaded, library/driver mismatch):
  the snapshot fails with :class:`~gpupool.ProviderError`, and the pool keeps
  its last good snapshot;
* "this field is not available" (not supported, no permission, no data,
  function missing from an old driver): that field becomes ``None``;
* anything else on one device (lost, unknown, needs reset, ...): that device
  is reported unhealthy with the reason, and the other devices are read as
  usual.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from types import ModuleType, TracebackType
from typing import Any, NoReturn, TypeVar, final

import attrs

from .._core.checks import check_instance
from .._core.errors import ProviderError
from .._core.model import GPUProcess, GPUStats
from ._visible import DeviceIdentity, VisibleDevicesError, parse_visible_devices, select_devices

__all__ = ["NVMLProvider"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_MIB = 1 << 20

# NVML return codes (nvml.h).
_UNINITIALIZED = 1
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_NOT_FOUND = 6
_INSUFFICIENT_SIZE = 7
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_LIB_RM_VERSION_MISMATCH = 18
_NO_DATA = 21
_ARGUMENT_VERSION_MISMATCH = 25
_NVML_DEVICE_MIG_ENABLE = 1

_LIBRARY_WIDE = frozenset({_UNINITIALIZED, _DRIVER_NOT_LOADED, _LIBRARY_NOT_FOUND,
                           _LIB_RM_VERSION_MISMATCH})  # fmt: skip
_UNAVAILABLE = frozenset({_NOT_SUPPORTED, _NO_PERMISSION, _FUNCTION_NOT_FOUND, _NO_DATA})

_NO_NVML_HINT = (
    "On a machine without NVIDIA GPUs, use gpupool.FakeGPUProvider "
    "(`gpupool status --fake-gpus N` on the command line)."
)


class _DeviceFault(Exception):
    """One device failed a query in a way that makes it unusable."""


@attrs.define(eq=False)
class _Device:
    identity: DeviceIdentity
    handle: Any
    #: Why the device could not even be identified at start-up (then: never healthy).
    broken: str | None = None
    last_total_mb: int = 0
    last_used_mb: int = 0
    was_healthy: bool = True


def _init_failure_message(code: int | None, error: BaseException) -> str:
    """What went wrong while starting NVML, and what to do about it."""
    if code == _LIBRARY_NOT_FOUND:
        what = (
            "the NVIDIA driver's NVML library (libnvidia-ml.so.1) was not found. "
            "Install the NVIDIA driver (`nvidia-smi` should then work); in a container, "
            "start it with GPU access (for example `docker run --gpus all`)."
        )
    elif code == _DRIVER_NOT_LOADED:
        what = (
            "the NVIDIA kernel driver is not loaded. Install or load the driver "
            "(`nvidia-smi` should then work), or check that this machine has an NVIDIA GPU."
        )
    elif code == _LIB_RM_VERSION_MISMATCH:
        what = (
            "the NVML library and the loaded kernel driver have different versions, usually "
            "because the driver was upgraded without a reboot. Reboot, or reload the nvidia "
            "kernel modules."
        )
    elif code == _FUNCTION_NOT_FOUND:
        what = (
            "the installed NVIDIA driver is too old for this nvidia-ml-py (a function is "
            "missing). Upgrade the NVIDIA driver, or install an nvidia-ml-py that matches it."
        )
    elif code == _NO_PERMISSION:
        what = (
            "this user may not access the GPUs (/dev/nvidia*). Ask the administrator for "
            "access, for example membership of the group that owns /dev/nvidia*."
        )
    else:
        what = f"NVML failed to start: {error} (NVML error code {code})."
    return f"cannot use NVML: {what} {_NO_NVML_HINT}"


@final
class NVMLProvider:
    """The GPUs of this machine as NVML reports them, limited to the devices
    that this process's ``CUDA_VISIBLE_DEVICES`` allows.

    NVML is started on the first :meth:`snapshot` (which the pool calls from
    a worker thread), and the devices are enumerated once then: a MIG
    reconfiguration needs a new provider. ``environ`` (default: ``os.environ``
    as it is when the provider is created) supplies ``CUDA_VISIBLE_DEVICES``
    and ``CUDA_DEVICE_ORDER``.

    Calls are serialised by a lock, so the provider is safe to share between
    threads. :meth:`close` (or leaving a ``with`` block) shuts NVML down.
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        if environ is not None:
            check_instance("environ", environ, Mapping, "a mapping of str to str or None")
        source = os.environ if environ is None else environ
        self._visible = source.get("CUDA_VISIBLE_DEVICES")
        self._device_order = source.get("CUDA_DEVICE_ORDER")
        self._lock = threading.Lock()
        self._nvml: ModuleType | None = None
        self._devices: list[_Device] | None = None
        self._driver_version: str | None = None
        self._memory_v2 = True
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._devices is not None else "not started"
        return f"<NVMLProvider CUDA_VISIBLE_DEVICES={self._visible!r} {state}>"

    @property
    def driver_version(self) -> str | None:
        """The NVIDIA driver version, once NVML has started (``None`` before)."""
        return self._driver_version

    def snapshot(self) -> list[GPUStats]:
        """Every device this process may use, in index order."""
        with self._lock:
            if self._closed:
                raise ProviderError("this NVMLProvider is closed; create a new one")
            if self._devices is None:
                self._devices = self._start()
            return [self._read(device) for device in self._devices]

    def close(self) -> None:
        """Shut NVML down (once NVML has started); later snapshots raise ``ProviderError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._nvml is not None and self._devices is not None:
                self._devices = None
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as error:
                    logger.warning("nvmlShutdown failed: %s", error)

    def __enter__(self) -> NVMLProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- start-up -----------------------------------------------------------

    def _import(self) -> ModuleType:
        try:
            return importlib.import_module("pynvml")
        except ImportError as error:
            raise ProviderError(
                "cannot use NVML: the nvidia-ml-py package (module pynvml) is not installed. "
                f"Install it with `pip install 'gpupool[nvml]'`. {_NO_NVML_HINT}"
            ) from error

    def _start(self) -> list[_Device]:
        nvml = self._nvml = self._import()
        try:
            entries = parse_visible_devices(self._visible)
        except VisibleDevicesError as error:
            raise ProviderError(str(error)) from error
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            code = getattr(error, "value", None)
            raise ProviderError(_init_failure_message(code, error)) from error
        try:
            try:
                self._driver_version = self._optional(nvml.nvmlSystemGetDriverVersion)
            except _DeviceFault:
                self._driver_version = None
            devices = self._enumerate()
            try:
                chosen = select_devices(
                    entries, [d.identity for d in devices], device_order=self._device_order
                )
            except VisibleDevicesError as error:
                raise ProviderError(str(error)) from error
        except BaseException:
            nvml.nvmlShutdown()
            raise
        by_index = {d.identity.index: d for d in devices}
        logger.debug("NVML %s: using %d device(s)", self._driver_version, len(chosen))
        return [by_index[identity.index] for identity in chosen]

    def _enumerate(self) -> list[_Device]:
        nvml = self._module()
        devices: list[_Device] = []
        for nvml_index in range(self._global(nvml.nvmlDeviceGetCount)):
            try:
                devices += self._identify(nvml_index, len(devices))
            except _DeviceFault as fault:
                logger.warning("NVML device %d cannot be identified: %s", nvml_index, fault)
                identity = DeviceIdentity(
                    index=len(devices),
                    uuid=f"unidentified-nvml-{nvml_index}",
                    name="unidentified GPU",
                    nvml_index=nvml_index,
                    model="unidentified GPU",
                )
                devices.append(_Device(identity, None, broken=str(fault)))
        return devices

    def _identify(self, nvml_index: int, first_index: int) -> list[_Device]:
        """The poolable devices of one physical GPU: itself, or its MIG instances."""
        nvml = self._module()
        handle = self._device_call(nvml.nvmlDeviceGetHandleByIndex, nvml_index)
        uuid = self._device_call(nvml.nvmlDeviceGetUUID, handle)
        name = self._name(handle)
        pci = self._optional(nvml.nvmlDeviceGetPciInfo, handle)
        bus_id = _text(pci.busId) if pci is not None else None
        if not self._mig_enabled(handle):
            return [
                _Device(DeviceIdentity(first_index, uuid, name, nvml_index, bus_id, name), handle)
            ]
        instances: list[_Device] = []
        for slot in range(self._optional(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            try:
                mig = self._device_call(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
                mig_uuid = self._device_call(nvml.nvmlDeviceGetUUID, mig)
            except _DeviceFault:
                continue  # an empty slot: no instance there
            identity = DeviceIdentity(
                index=first_index + len(instances),
                uuid=mig_uuid,
                name=self._name(mig),
                nvml_index=nvml_index,
                pci_bus_id=bus_id,
                model=name,
                parent_uuid=uuid,
            )
            instances.append(_Device(identity, mig))
        if not instances:
            logger.warning("GPU %d (%s) is in MIG mode but has no MIG instances", nvml_index, uuid)
        return instances

    def _name(self, handle: Any) -> str:
        return self._optional(self._module().nvmlDeviceGetName, handle) or "NVIDIA GPU"

    def _mig_enabled(self, handle: Any) -> bool:
        nvml = self._module()
        if not hasattr(nvml, "nvmlDeviceGetMigMode"):
            return False
        modes = self._optional(nvml.nvmlDeviceGetMigMode, handle)
        return modes is not None and modes[0] == _NVML_DEVICE_MIG_ENABLE

    # ---- one snapshot -------------------------------------------------------

    def _read(self, device: _Device) -> GPUStats:
        identity = device.identity
        if device.broken is not None:
            return self._unhealthy(device, device.broken)
        try:
            total_mb, used_mb = self._memory(device.handle)
            utilization = self._optional(
                self._module().nvmlDeviceGetUtilizationRates, device.handle
            )
            processes = self._processes(device.handle)
        except _DeviceFault as fault:
            return self._unhealthy(device, str(fault))
        if not device.was_healthy:
            logger.warning("GPU %d (%s) answers NVML again", identity.index, identity.uuid)
        device.was_healthy = True
        device.last_total_mb, device.last_used_mb = total_mb, used_mb
        return GPUStats(
            index=identity.index,
            uuid=identity.uuid,
            name=identity.name,
            memory_total_mb=total_mb,
            memory_used_mb=used_mb,
            utilization_pct=None if utilization is None else float(min(100, utilization.gpu)),
            healthy=True,
            pci_bus_id=identity.pci_bus_id,
            processes=processes,
        )

    def _unhealthy(self, device: _Device, detail: str) -> GPUStats:
        identity = device.identity
        if device.was_healthy:
            logger.warning("GPU %d (%s) is unhealthy: %s", identity.index, identity.uuid, detail)
        device.was_healthy = False
        return GPUStats(
            index=identity.index,
            uuid=identity.uuid,
            name=identity.name,
            memory_total_mb=device.last_total_mb,
            memory_used_mb=device.last_used_mb,
            utilization_pct=None,
            healthy=False,
            pci_bus_id=identity.pci_bus_id,
            health_detail=detail,
        )

    def _memory(self, handle: Any) -> tuple[int, int]:
        """(total, used) in MiB; used is everything not free, driver-reserved memory included."""
        nvml = self._module()
        info = None
        version = getattr(nvml, "nvmlMemory_v2", None)
        if self._memory_v2 and version is not None:
            # The v2 call exists since driver R510; older drivers lack the symbol or
            # reject the struct version, and v1 is the fallback for good.
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except TypeError:  # an nvidia-ml-py from before the version argument
                self._memory_v2 = False
            except nvml.NVMLError as error:
                code = getattr(error, "value", None)
                if code in (_FUNCTION_NOT_FOUND, _ARGUMENT_VERSION_MISMATCH):
                    self._memory_v2 = False
                elif code != _NOT_SUPPORTED:
                    self._classify(error)
        if info is None:
            info = self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        if info is None:
            return 0, 0  # e.g. unified-memory devices that report no memory of their own
        total = int(info.total)
        used = max(0, total - int(info.free))
        return total // _MIB, min(total, used) // _MIB

    def _processes(self, handle: Any) -> tuple[GPUProcess, ...]:
        nvml = self._module()
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", ())
        query = nvml.nvmlDeviceGetComputeRunningProcesses
        for attempt in range(2):
            try:
                found = query(handle)
                break
            except mismatch:  # the driver lacks the newest versioned symbol
                query = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses_v2", None)
                if query is None:
                    return ()
            except nvml.NVMLError as error:
                code = getattr(error, "value", None)
                # The list changed between NVML's "how many" and "fill in" steps,
                # or a process vanished mid-query: ask again once, then give up quietly.
                if code in (_NOT_FOUND, _INSUFFICIENT_SIZE):
                    if attempt == 0:
                        continue
                    return ()
                if code in _UNAVAILABLE:
                    return ()
                self._classify(error)
        else:
            return ()
        by_pid: dict[int, int | None] = {}
        for process in found:
            pid = int(process.pid)
            used = process.usedGpuMemory
            mb = None if used is None else int(used) // _MIB
            previous = by_pid.get(pid)
            by_pid[pid] = mb if previous is None else max(previous, mb or 0)
        return tuple(GPUProcess(pid, mb) for pid, mb in sorted(by_pid.items()))

    # ---- error classification ----------------------------------------------

    def _module(self) -> ModuleType:
        assert self._nvml is not None
        return self._nvml

    def _classify(self, error: BaseException) -> NoReturn:
        """Raise what ``error`` means: ``ProviderError`` for NVML as a whole,
        ``_DeviceFault`` for one device. (Unavailable fields are handled by callers.)"""
        code = getattr(error, "value", None)
        if code == _UNINITIALIZED:
            # Someone else in this process shut NVML down (its reference count is
            # shared): start afresh at the next snapshot.
            self._devices = None
        if code in _LIBRARY_WIDE:
            raise ProviderError(
                f"NVML stopped working: {error} (NVML error code {code})"
            ) from error
        raise _DeviceFault(f"{error} (NVML error code {code})") from error

    def _global(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except self._module().NVMLError as error:
            code = getattr(error, "value", None)
            raise ProviderError(f"NVML failed: {error} (NVML error code {code})") from error

    def _device_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return fn(*args)
        except self._module().NVMLError as error:
            self._classify(error)

    def _optional(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        try:
            return fn(*args)
        except self._module().NVMLError as error:
            if getattr(error, "value", None) in _UNAVAILABLE:
                return None
            self._classify(error)


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
