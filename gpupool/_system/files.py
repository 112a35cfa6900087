"""Writing a file so that a reader sees all of it or none of it.

One way for every output gpupool writes whole (``journal export``, ``journal
plot``, the Hydra launcher's job files): a temporary file beside the target,
flushed to disk, then renamed over it. A failure (a full disk, an exception
of the writer) removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["atomic_file"]


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", **open_args: Any
) -> Iterator[IO[Any]]:
    """``open(path, mode, **open_args)`` written under a temporary name, renamed into
    place when the block ends without an exception."""
    target = os.fspath(path)
    partial = f"{target}.tmp{os.getpid()}"
    try:
        with open(partial, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
