"""Whether a failure was the GPU running out of memory: one rule for every layer.

Two kinds of evidence, read in one place so that an in-process task and a
subprocess job are judged alike:

* **text**: :data:`CUDA_OOM_PATTERN`, the messages CUDA, PyTorch, TensorFlow
  and JAX/XLA print when device memory runs out. ``run_process`` searches a
  job's output with it (``ProcessResult.cuda_oom``); :func:`is_out_of_memory`
  searches an exception's message with it.
* **types**: the exception classes those libraries raise, matched by class
  name along the MRO (``torch.OutOfMemoryError``, which is also
  ``torch.cuda.OutOfMemoryError``; CuPy's ``OutOfMemoryError``;
  TensorFlow's ``ResourceExhaustedError``), so that none of them need be
  imported, or even installed.

An exception that carries a bool ``cuda_oom`` attribute (``ProcessFailed``
does: it is what ``run_process`` read in the job's output) is taken at its
word, and its message is not searched: the message of a failed command
quotes the command line, which may mention anything.
"""

from __future__ import annotations

import re

__all__ = ["CUDA_OOM_PATTERN", "OUT_OF_MEMORY_TYPE_NAMES", "is_out_of_memory"]

#: Messages that CUDA, PyTorch, TensorFlow and JAX/XLA print when device
#: memory runs out. Matched case-insensitively against bytes (a job's output).
CUDA_OOM_PATTERN = re.compile(
    rb"CUDA out of memory"
    rb"|CUDA error: out of memory"
    rb"|torch(?:\.cuda)?\.OutOfMemoryError"
    rb"|CUDA_ERROR_OUT_OF_MEMORY"
    rb"|cudaErrorMemoryAllocation"
    rb"|CUBLAS_STATUS_ALLOC_FAILED"
    rb"|CUDNN_STATUS_ALLOC_FAILED"
    rb"|RESOURCE_EXHAUSTED: Out of memory"
    rb"|OOM when allocating tensor",
    re.IGNORECASE,
)

#: Exception class names that mean device memory ran out, wherever they are
#: defined (matched along the MRO, so subclasses count).
OUT_OF_MEMORY_TYPE_NAMES = frozenset({"OutOfMemoryError", "ResourceExhaustedError"})

# A message longer than this is searched at its end only (where a traceback's
# last line is): an exception may carry a whole log in its message.
_MESSAGE_SCAN_CHARS = 64 * 1024


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error``, or an exception it was raised from, says device memory ran out.

    Follows ``__cause__`` and ``__context__`` (a task that wraps the OOM in an
    error of its own still counts) and the members of exception groups.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        verdict = _says_itself(exc)
        if verdict is True:
            return True
        if verdict is None and (_has_oom_type(exc) or _has_oom_message(exc)):
            return True
        todo.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        if _is_group(exc):
            todo.extend(m for m in getattr(exc, "exceptions", ()) if isinstance(m, BaseException))
    return False


def _says_itself(exc: BaseException) -> bool | None:
    """An exception's own ``cuda_oom`` bool, or None where it has none."""
    verdict = getattr(exc, "cuda_oom", None)
    return verdict if isinstance(verdict, bool) else None


def _is_group(exc: BaseException) -> bool:
    # By name: BaseExceptionGroup is built in from Python 3.11 only (the
    # exceptiongroup backport's class has the same name).
    return any(cls.__name__ == "BaseExceptionGroup" for cls in type(exc).__mro__)


def _has_oom_type(exc: BaseException) -> bool:
    return any(cls.__name__ in OUT_OF_MEMORY_TYPE_NAMES for cls in type(exc).__mro__)


def _has_oom_message(exc: BaseException) -> bool:
    try:
        text = str(exc)
    except Exception:  # a broken __str__ says nothing either way
        return False
    tail = text[-_MESSAGE_SCAN_CHARS:].encode("utf-8", "replace")
    return CUDA_OOM_PATTERN.search(tail) is not None
