"""Run a batch of Hydra jobs through gpupool: the launcher's ``launch``.

One ``launch`` call (a sweeper's batch; the basic sweeper sends the whole
sweep as one) opens a pool, a journal in the sweep directory and a runner,
and runs every job as a runner task: the task waits for its GPUs, starts the
job's process with `gpupool.run_process` (``CUDA_VISIBLE_DEVICES`` from the
allocation), waits for it and reads its ``JobReturn`` back (payload.py,
child.py). So jobs run as many at once as the GPUs allow, each in a process
of its own that sees only its GPUs; one job's failure is its own; and a
rerun of the same sweep finds its finished jobs in the journal (keys.py).

What the journal keeps of a finished job is JSON (returns.py). A return
value with no JSON form reaches Hydra in this run as it was returned, but
the journal records the job as failed (``JournalEncodingError``, the
runner's rule for such values), so a rerun runs it again; the launcher logs
a warning saying so when it happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from ..._core.errors import ProviderError
from ..._core.model import GPUAllocation
from ..._core.results import TaskResult, TaskStatus
from ..._journal.store import Journal
from ..._pool.pool import GPUResourcePool
from ..._process.run import run_process
from ..._runner.events import TaskEvent
from ..._runner.runner import ParallelRunner
from ...providers import FakeGPUProvider
from .jobs import HydraJob, prepare_jobs
from .options import LauncherOptions
from .payload import LaunchPayload, read_result, type_name, write_job, write_launch
from .returns import (
    EarlierJobFailure,
    RemoteTraceback,
    completed_from_record,
    failed_return,
    journal_record,
)

__all__ = ["JOB_OUTPUT", "JOURNAL_NAME", "launch"]

log = logging.getLogger("hydra_plugins.gpupool_launcher")

#: The journal's file name in the sweep directory (``hydra.launcher.journal`` moves it).
JOURNAL_NAME = "gpupool.journal.sqlite"
#: Each job's stdout and stderr, in its output directory.
JOB_OUTPUT = "job.out"


def launch(
    settings: Mapping[str, Any],
    *,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> list[JobReturn]:
    """What ``GPUPoolLauncher.launch`` does: every job run, one ``JobReturn`` each, in order."""
    options = LauncherOptions.from_config(settings)
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs = prepare_jobs(hydra_context, config, job_overrides, initial_job_idx)
    journal_path = options.journal or str(sweep_dir / JOURNAL_NAME)
    log.info(f"gpupool is launching {len(jobs)} jobs, journal {journal_path}")
    for job in jobs:
        log.info(f"\t{job.label}")
    with tempfile.TemporaryDirectory(prefix="gpupool-hydra-") as scratch:
        files = Path(scratch)
        write_launch(
            files / "launch.pkl",
            LaunchPayload(task_function, hydra_context, Singleton.get_state()),
        )
        for job in jobs:
            write_job(files / f"{job.num}.job.pkl", job.sweep_config)
        with Journal(journal_path, retry_failed=options.retry_failed) as journal:
            sweep = _Sweep(options, jobs, files, journal)
            return anyio.run(sweep.run)


class _Sweep:
    """The jobs of one ``launch`` call, run by a runner over a pool."""

    def __init__(
        self, options: LauncherOptions, jobs: list[HydraJob], files: Path, journal: Journal
    ) -> None:
        self.options = options
        self.jobs = jobs
        self.by_key: dict[str, HydraJob] = {}
        for job in jobs:  # a job listed twice runs once, as the first of them
            self.by_key.setdefault(job.key, job)
        self.files = files
        self.journal = journal
        #: The JobReturn each job's process sent back in this run (its last attempt's).
        self.returns: dict[str, JobReturn] = {}
        self.cwd = os.getcwd()

    def _pool(self) -> GPUResourcePool | None:
        options = self.options
        if options.resources.required_gpus == 0:
            return None  # CPU jobs never ask for GPUs: no driver to open
        fake = options.fake_gpus
        kwargs: dict[str, Any] = {}
        if options.ledger is False:
            kwargs["ledger"] = None
        elif options.ledger is not None:
            kwargs["ledger"] = options.ledger
        return GPUResourcePool(
            None if fake is None else FakeGPUProvider(count=fake),
            refresh_interval=0.25 if fake else 1.0,
            **kwargs,
        )

    async def run(self) -> list[JobReturn]:
        """Run every job; a SIGTERM or SIGHUP ends them (gracefully) and exits 128 + N."""
        stopped_by: list[int] = []
        results: list[TaskResult] = []
        failure: Exception | None = None
        async with contextlib.AsyncExitStack() as stack:
            pool = await self._open_pool(stack)
            async with anyio.create_task_group() as group:
                group.start_soon(self._stop_on_signal, group.cancel_scope, stopped_by)
                try:
                    results = await self._run_jobs(pool)
                except Exception as error:  # raised as itself, not in the group's ExceptionGroup
                    failure = error
                group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if stopped_by:
            signum = stopped_by[0]
            log.error(
                f"gpupool: stopped by {signal.Signals(signum).name}; the journal has every job "
                "that finished, and the same command runs the others"
            )
            raise SystemExit(128 + signum)
        return [self._job_return(job, r) for job, r in zip(self.jobs, results, strict=True)]

    async def _open_pool(self, stack: contextlib.AsyncExitStack) -> GPUResourcePool | None:
        pool = self._pool()
        if pool is None:
            return None
        try:
            return await stack.enter_async_context(pool)
        except ProviderError as error:
            raise ProviderError(
                f"{error} With Hydra: hydra.launcher.fake_gpus=N pretends there are N GPUs, "
                "and hydra.launcher.gpus_per_job=0 runs the jobs on the CPU."
            ) from error

    async def _stop_on_signal(self, scope: anyio.CancelScope, stopped_by: list[int]) -> None:
        # Ctrl-C is Python's KeyboardInterrupt, which cancels the run by itself; these two
        # would otherwise kill this process alone and leave the jobs (in sessions of their
        # own) running on their GPUs.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                stopped_by.append(signum)
                scope.cancel()
                return

    async def _run_jobs(self, pool: GPUResourcePool | None) -> list[TaskResult]:
        runner = ParallelRunner(pool, max_parallel=self.options.max_parallel, journal=self.journal)
        async with runner:
            return await self._map(runner)

    async def _map(self, runner: ParallelRunner) -> list[TaskResult]:
        options = self.options
        runner.subscribe(self._on_event)
        return await runner.map(
            self._run_job,
            [job.describe() for job in self.jobs],
            key=lambda item: str(item["key"]),
            resources=options.resources,
            timeout=options.timeout,
            retries=options.retries,
        )

    async def _run_job(self, item: dict[str, Any], allocation: GPUAllocation | None) -> Any:
        """One attempt of one job: its process, its JobReturn, the journal's record of it."""
        job = self.by_key[item["key"]]
        self.returns.pop(job.key, None)
        result_file = self.files / f"{job.num}.result.pkl"
        result_file.unlink(missing_ok=True)
        await anyio.Path(job.output_dir).mkdir(parents=True, exist_ok=True)
        env = {"GPUPOOL_JOB_KEY": job.key}
        if allocation is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-only job must not touch the GPUs
        command = [
            sys.executable,
            "-m",
            "gpupool.integrations.hydra.child",
            str(self.files / "launch.pkl"),
            str(self.files / f"{job.num}.job.pkl"),
            str(result_file),
        ]
        await run_process(
            command,
            allocation=allocation,
            log_path=job.output_dir / JOB_OUTPUT,
            env=env,
            cwd=self.cwd,
            grace_period=self.options.grace_period,
        )
        sent = await anyio.to_thread.run_sync(read_result, result_file)
        job_return = sent.job_return
        self.returns[job.key] = job_return
        if job_return.status is JobStatus.FAILED:
            error = job_return._return_value
            if sent.traceback is not None and isinstance(error, BaseException):
                error.__cause__ = RemoteTraceback(sent.traceback)
            raise error
        return journal_record(job_return)

    def _job_return(self, job: HydraJob, result: TaskResult) -> JobReturn:
        """Hydra's JobReturn for ``job``, from this run or from the journal."""
        sent = None if result.from_journal else self.returns.get(job.key)
        if sent is not None:
            if sent.status is JobStatus.COMPLETED and result.status is not TaskStatus.SUCCEEDED:
                log.warning(
                    f"{job.label}: its return value, a {type_name(sent._return_value)}, has no "
                    f"JSON form, so the journal cannot keep it ({result.error}); Hydra gets it "
                    "in this run, but a rerun of this sweep will run the job again. Return "
                    "plain data (float(x), x.tolist()) to make finished jobs resumable."
                )
            return sent
        if result.status is TaskStatus.SUCCEEDED:
            return completed_from_record(
                result.value, overrides=job.overrides, cfg=job.task_cfg, hydra_cfg=job.hydra_cfg
            )
        return failed_return(
            self._error(job, result),
            overrides=job.overrides,
            cfg=job.task_cfg,
            hydra_cfg=job.hydra_cfg,
            task_name=job.task_name,
        )

    def _error(self, job: HydraJob, result: TaskResult) -> BaseException:
        """The exception Hydra gets for a job whose process sent no JobReturn."""
        if result.from_journal:
            error = EarlierJobFailure(
                f"{job.label} failed in an earlier run of this sweep: {result.error} "
                "(hydra.launcher.retry_failed=true runs it again)"
            )
            if result.traceback:
                error.__cause__ = RemoteTraceback(result.traceback)
            return error
        if result.status is TaskStatus.TIMED_OUT:
            return TimeoutError(
                f"{job.label} timed out after {self.options.timeout:g} s "
                "(hydra.launcher.timeout); its processes were ended"
            )
        if result.exception is not None:
            return result.exception
        return RuntimeError(f"{job.label} ended {result.status.name}: {result.error}")

    def _on_event(self, event: TaskEvent) -> None:
        job = self.by_key.get(event.key)
        if job is None:
            return
        if event.from_journal:
            log.info(f"{job.label}: finished in an earlier run (journal), not run again")
        elif event.status is TaskStatus.RUNNING:
            gpus = f" on GPUs {list(event.gpu_indices)}" if event.gpu_indices else ""
            log.info(f"{job.label}: started{gpus}")
        elif event.status is TaskStatus.SUCCEEDED:
            log.info(f"{job.label}: completed")
        elif event.status.is_final:
            output = job.output_dir / JOB_OUTPUT
            where = f"; its output: {output}" if output.exists() else ""  # none if it never ran
            log.info(
                f"{job.label}: {event.status.name.lower().replace('_', ' ')} ({event.error}){where}"
            )
        elif event.status is TaskStatus.RETRYING:
            log.info(f"{job.label}: failed ({event.error}), retrying")
