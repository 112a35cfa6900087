"""Hydra's ``JobReturn`` for each job, whichever way the job ended.

Hydra's sweepers read a launcher's results as its basic launcher gives them:
one ``JobReturn`` per job, in order, with ``status`` COMPLETED and the task's
return value, or FAILED and the exception (which ``return_value`` raises, so
the basic sweeper reports the first failed job once all of them have run).
A job can end in four ways here, and each gets such a ``JobReturn``:

* its process ran the task: the ``JobReturn`` that Hydra's ``run_job`` made
  there (the exception of a failed task carries the job's traceback as its
  ``__cause__``, as ``concurrent.futures`` does for a process pool);
* its process died, or timed out: FAILED with the `gpupool.ProcessFailed`
  (which quotes the end of the job's output) or a ``TimeoutError``;
* it finished in an earlier run: rebuilt from the journal's record. The
  configs are made again from the overrides, as ``run_job`` makes them; the
  return value, the working directory and the task name are the recorded ones;
* it failed in an earlier run (with ``retry_failed=false``): FAILED with
  `EarlierJobFailure`, whose message is the recorded error.

The journal keeps JSON (docs/journal.md): `journal_record` is what it stores
for a finished job.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

__all__ = [
    "EarlierJobFailure",
    "RemoteTraceback",
    "completed_from_record",
    "failed_return",
    "journal_record",
]


class RemoteTraceback(Exception):
    """The traceback of a job's exception, as text from the job's process.

    Set as the ``__cause__`` of the exception that the launcher hands to
    Hydra, so that Hydra's error report shows where the job failed.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip()


class EarlierJobFailure(RuntimeError):
    """A job that failed in an earlier run of the sweep and was not run again
    (``hydra.launcher.retry_failed=false``): its message is the recorded error."""


def journal_record(job_return: JobReturn) -> dict[str, Any]:
    """What the journal keeps of a COMPLETED job (JSON, if the return value has a JSON form)."""
    return {
        "return_value": job_return._return_value,
        "working_dir": job_return.working_dir,
        "task_name": job_return.task_name,
    }


def completed_from_record(
    record: Mapping[str, Any],
    *,
    overrides: Sequence[str],
    cfg: DictConfig,
    hydra_cfg: DictConfig,
) -> JobReturn:
    """The ``JobReturn`` of a job that finished in an earlier run."""
    return JobReturn(
        overrides=list(overrides),
        cfg=copy.deepcopy(cfg),
        hydra_cfg=copy.deepcopy(hydra_cfg),
        working_dir=record.get("working_dir"),
        task_name=record.get("task_name"),
        status=JobStatus.COMPLETED,
        _return_value=record.get("return_value"),
    )


def failed_return(
    error: BaseException,
    *,
    overrides: Sequence[str],
    cfg: DictConfig,
    hydra_cfg: DictConfig,
    task_name: str | None,
) -> JobReturn:
    """A FAILED ``JobReturn`` for a job whose process gave none (it died, timed out,
    or failed in an earlier run)."""
    return JobReturn(
        overrides=list(overrides),
        cfg=copy.deepcopy(cfg),
        hydra_cfg=copy.deepcopy(hydra_cfg),
        working_dir=None,
        task_name=task_name,
        status=JobStatus.FAILED,
        _return_value=error,
    )
