"""Telling a GPU out-of-memory failure from any other (gpupool/_core/oom.py)."""

from __future__ import annotations

import sys

import pytest

from gpupool._core.oom import CUDA_OOM_PATTERN, is_out_of_memory
from gpupool._process import run as process_run
from gpupool._process.run import ProcessFailed, ProcessResult

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup


class OutOfMemoryError(RuntimeError):
    """Named as torch.OutOfMemoryError (and CuPy's) is: matched by name."""


class ResourceExhaustedError(Exception):
    """Named as tensorflow.errors.ResourceExhaustedError is."""


class CustomOOM(OutOfMemoryError):
    """A subclass counts too (the name is looked up along the MRO)."""


def _failed(*, cuda_oom: bool, command: str = "python train.py") -> ProcessFailed:
    return ProcessFailed(
        ProcessResult(args=command, returncode=1, pid=1, duration_s=1.0, cuda_oom=cuda_oom)
    )


@pytest.mark.parametrize(
    "error",
    [
        OutOfMemoryError("Tried to allocate 2.00 GiB"),
        CustomOOM("any words"),
        ResourceExhaustedError("some resource"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.8 GiB total)"),
        RuntimeError("CUDA error: out of memory"),
        ValueError("XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate"),
        RuntimeError("OOM when allocating tensor with shape[1024,1024]"),
        RuntimeError("cuBLAS failed: CUBLAS_STATUS_ALLOC_FAILED"),
        _failed(cuda_oom=True),
    ],
    ids=repr,
)
def test_out_of_memory_errors_are_recognised(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("loss is NaN"),
        MemoryError("host memory, not the GPU's"),
        ValueError(""),
        _failed(cuda_oom=False),
        # The command's own text is no evidence: ProcessFailed says what the output showed.
        _failed(cuda_oom=False, command="echo 'CUDA out of memory'"),
    ],
    ids=repr,
)
def test_other_errors_are_not(error: BaseException) -> None:
    assert not is_out_of_memory(error)


def _raised_from(inner: BaseException, *, explicit: bool) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as caught:
            if explicit:
                raise RuntimeError("training step failed") from caught
            raise RuntimeError("while cleaning up")  # noqa: B904 (the implicit context is the point)
    except RuntimeError as outer:
        return outer


def test_chained_causes_and_contexts_and_groups_count() -> None:
    assert is_out_of_memory(_raised_from(OutOfMemoryError("x"), explicit=True))
    assert is_out_of_memory(_raised_from(_failed(cuda_oom=True), explicit=False))
    assert not is_out_of_memory(_raised_from(ValueError("x"), explicit=True))
    group = ExceptionGroup("tasks", [ValueError("a"), RuntimeError("CUDA out of memory")])
    assert is_out_of_memory(group)
    assert not is_out_of_memory(BaseExceptionGroup("tasks", [KeyboardInterrupt()]))


def test_a_cycle_of_contexts_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert not is_out_of_memory(first)


def test_a_broken_str_is_no_evidence() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert not is_out_of_memory(Broken())


def test_run_process_reads_output_with_the_same_pattern() -> None:
    # One pattern for both kinds of evidence: the name the docs give is this one.
    assert process_run.CUDA_OOM_PATTERN is CUDA_OOM_PATTERN
    assert _failed(cuda_oom=True).cuda_oom


def test_real_torch_out_of_memory_error_is_recognised() -> None:
    torch = pytest.importorskip("torch")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("Tried to allocate 2 GiB"))
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)
    assert not is_out_of_memory(torch.cuda.DeferredCudaCallError("device-side assert triggered"))
