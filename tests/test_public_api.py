"""The public names: what `gpupool` exports is exactly `__all__`, sorted, importable,
and public classes are final unless they are meant to be subclassed."""

from __future__ import annotations

import enum
import importlib
import inspect
from typing import Protocol

import gpupool

MEANT_TO_BE_SUBCLASSED: set[str] = set()


def test_all_is_sorted_and_unique() -> None:
    assert list(gpupool.__all__) == sorted(set(gpupool.__all__))


def test_every_name_in_all_is_importable() -> None:
    module = importlib.import_module("gpupool")
    for name in gpupool.__all__:
        assert getattr(module, name) is not None, name


def test_every_public_attribute_is_in_all() -> None:
    exported = set(gpupool.__all__)
    for name, value in vars(gpupool).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        assert name in exported, f"gpupool.{name} is public but missing from __all__"


def test_designs_public_names_are_exported() -> None:
    for name in [
        "GPUResourcePool",
        "GPUAllocation",
        "GPUStats",
        "GPUProvider",
        "FakeGPUProvider",
        "NVMLProvider",
        "ParallelRunner",
        "run_blocking",
        "TaskResult",
        "TaskStatus",
        "run_process",
        "GPUPoolError",
        "PoolTimeout",
        "UnsatisfiableRequest",
        "PoolClosed",
        "AllocationNotHeld",
        "ProviderError",
        "WouldBlock",
    ]:
        assert name in gpupool.__all__, name


def test_exceptions_subclass_what_they_really_are() -> None:
    assert issubclass(gpupool.PoolTimeout, TimeoutError)
    assert issubclass(gpupool.UnsatisfiableRequest, ValueError)
    for name in gpupool.__all__:
        value = getattr(gpupool, name)
        if inspect.isclass(value) and issubclass(value, Exception):
            assert issubclass(value, gpupool.GPUPoolError), name


def test_public_classes_are_final_unless_meant_to_be_subclassed() -> None:
    for name in gpupool.__all__:
        value = getattr(gpupool, name)
        if not inspect.isclass(value) or name in MEANT_TO_BE_SUBCLASSED:
            continue
        if issubclass(value, (BaseException, enum.Enum)) or Protocol in value.__mro__[1:]:
            continue  # exceptions form a hierarchy; enums and protocols cannot be final
        assert getattr(value, "__final__", False), f"gpupool.{name} should be @final"


def test_importing_gpupool_does_not_import_optional_dependencies() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gpupool\n"
        "loaded = [m for m in ('pynvml', 'optuna', 'ray', 'dask') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_gpupool_testing_exports_exactly_its_sorted_all() -> None:
    import gpupool.testing as testing

    assert list(testing.__all__) == sorted(set(testing.__all__))
    public = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(testing.__all__)
