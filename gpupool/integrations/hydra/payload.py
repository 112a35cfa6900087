"""What crosses from the launcher to a job's process and back, as files.

Each job runs in a process of its own (``python -m
gpupool.integrations.hydra.child``), started by `gpupool.run_process` with
the job's GPUs in its environment. The process needs what Hydra's
``run_job`` needs: the task function, the Hydra context (config loader,
callbacks), the job's config and Hydra's singletons (the config store,
the resolvers: ``Singleton.get_state()``), as Hydra's submitit and joblib
launchers send them. They are pickled with cloudpickle, as those launchers
do, because the task function of ``python train.py`` lives in ``__main__``
and the registered resolvers are lambdas: plain pickle sends neither.

Files, not pipes: the launch file (shared by every job of a ``launch``
call), one job file per job, and the result file the job's process writes
last, atomically (a job that dies half way leaves none, never half of one).
They live in a private temporary directory and are never read by anything
but the launcher and its jobs: unlike the journal, whose content is JSON on
purpose, these files are pickles, and reading one runs code.

The launch file starts with ``sys.path``, pickled on its own, so that the
job's process can import the user's modules (``import model`` beside
``train.py``) before it unpickles anything that refers to them.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

import attrs

from ..._system.files import atomic_file

__all__ = [
    "JobResult",
    "LaunchPayload",
    "read_job",
    "read_launch",
    "read_result",
    "type_name",
    "write_atomically",
    "write_job",
    "write_launch",
    "write_result",
]


@attrs.frozen
class LaunchPayload:
    """What every job of one ``launch`` call shares."""

    task_function: Any
    hydra_context: Any
    singleton_state: Any


@attrs.frozen
class JobResult:
    """What a job's process sends back: Hydra's ``JobReturn`` and, for a failed job,
    the traceback of its exception as text (a traceback does not pickle)."""

    job_return: Any
    traceback: str | None = None


def type_name(value: object) -> str:
    """``dict``, ``numpy.float32``: the type of ``value`` as messages name it."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _dumps(value: object) -> bytes:
    import cloudpickle  # the hydra extra's; imported where it is used

    return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or no file."""
    with atomic_file(path) as file:
        file.write(data)


def write_launch(path: Path, payload: LaunchPayload) -> None:
    head = pickle.dumps(list(sys.path), protocol=pickle.HIGHEST_PROTOCOL)
    write_atomically(path, head + _dumps(payload))


def read_launch(path: Path) -> LaunchPayload:
    """Read the launch file; puts the launcher's ``sys.path`` in front of this one's first."""
    with open(path, "rb") as file:
        paths = pickle.load(file)
        sys.path[:0] = [p for p in paths if p not in sys.path]
        payload = pickle.load(file)
    assert isinstance(payload, LaunchPayload)
    return payload


def write_job(path: Path, sweep_config: object) -> None:
    write_atomically(path, _dumps(sweep_config))


def read_job(path: Path) -> Any:
    with open(path, "rb") as file:
        return pickle.load(file)


def write_result(path: Path, job_return: Any) -> None:
    """Send ``job_return`` back; what cannot be pickled is replaced by an error saying so.

    A failed job's exception travels with its traceback as text. A return value
    (or an exception) that does not pickle cannot reach the launcher: the job
    is then FAILED with a ``TypeError`` that names the value's type, since a
    sweeper that reads return values must not get a silent ``None``.
    """
    from hydra.core.utils import JobStatus

    error = job_return._return_value if job_return.status is JobStatus.FAILED else None
    text = None if error is None else "".join(traceback.format_exception(error))
    try:
        data = _dumps(JobResult(job_return, text))
    except Exception as exc:  # what pickling a user's object raises is anyone's guess
        value = job_return._return_value
        if error is None:
            message = (
                f"the job's return value, a {type_name(value)}, "
                f"cannot be pickled to be sent back from the job's process ({exc}); "
                "return plain data (numbers, strings, lists, dicts)"
            )
        else:
            message = (
                f"the job failed with {type(error).__qualname__}: {error}, an exception that "
                f"cannot be pickled to be sent back from the job's process ({exc})"
            )
        job_return.status = JobStatus.FAILED
        job_return.return_value = TypeError(message)
        data = _dumps(JobResult(job_return, text))
    write_atomically(path, data)


def read_result(path: Path) -> JobResult:
    with open(path, "rb") as file:
        result = pickle.load(file)
    assert isinstance(result, JobResult)
    return result
