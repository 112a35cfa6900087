"""``gpupool run JOBS_FILE``: a file of shell commands, shared out over the GPUs.

How the pieces fit: the jobs file is parsed (``jobs_file``), every job becomes a
task of a :class:`ParallelRunner` on a :class:`GPUResourcePool`, each task
runs its command with :func:`run_process` (own session, its GPUs in
``CUDA_VISIBLE_DEVICES``, output to ``LOG_DIR/`` :attr:`JobSpec.log_name`), and
the runner writes every state change to the SQLite journal before acting on
it, with the job's line, command and log as the task's item. Running
the same command again therefore resumes: the journal answers finished jobs
without running them (failed ones too, unless ``--retry-failed``), and a
crashed run's leftover process groups are killed before any GPU is granted.

Interrupts: the first Ctrl-C (or SIGTERM) cancels the runner; every running
job gets SIGTERM, the grace period, then SIGKILL, and is journaled as
cancelled (it runs again next time). A second Ctrl-C does not wait: it
SIGKILLs the job groups and exits at once; the journal (SQLite, WAL) stays
consistent and the next run takes it over as a crashed run's.

Every line is checked before anything runs, syntax and capacity alike (a
job asking for more GPUs or more memory than the machine has could never
start), and all problems are reported together; so no job is ever journaled
as failed for a request no GPU could satisfy.

Exit codes: 0 every job succeeded; 1 a job failed, timed out or was not
run, or a line appended under ``--watch`` was bad; 2 bad usage or input
(nothing was run, nothing half-written); 130 interrupted with jobs still
running or queued (under ``--watch``, where Ctrl-C is the normal way to
stop, a Ctrl-C with nothing left to do exits 0 or 1 as if the file ended).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, final

import anyio
import anyio.to_thread
import attrs
from rich.console import Console

from .._core.errors import GPUPoolError, JournalError, LedgerError, ProviderError
from .._core.model import GPUAllocation, GPUStatistics
from .._core.results import TaskStatus
from .._journal.adapter import RunnerJournal
from .._journal.store import Journal
from .._ledger.location import DEFAULT
from .._pool.pool import GPUResourcePool
from .._process.proctree import killpg_quietly
from .._process.run import DEFAULT_GRACE_PERIOD, run_process
from .._process.tmux import (
    TmuxError,
    TmuxSession,
    TmuxWindow,
    session_name,
    tmux_command,
    window_name,
)
from .._runner.events import TaskEvent
from .._runner.remote import RemoteGPUs
from .._runner.runner import ParallelRunner
from .._runner.task import TaskHandle
from ..providers import FakeGPUProvider
from .args import (
    add_fake_gpus_option,
    add_ledger_option,
    add_ray_options,
    duration_arg,
    int_arg,
    memory_arg,
    node_provider,
    seconds_arg,
    size_text,
)
from .jobs_file import (
    JobCheck,
    JobDefaults,
    JobsFileError,
    JobsFileReader,
    JobSpec,
    LineProblem,
)
from .progress import JobsProgress

__all__ = ["RunOptions", "add_parser", "capacity_problem", "run_jobs"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: How often ``--watch`` looks at the jobs file's size, modification time and inode.
WATCH_INTERVAL = 0.5
#: Seconds the tmux window of a failed job stays open (``--tmux-keep-failed``).
DEFAULT_KEEP_FAILED = 60.0


class _UsageError(Exception):
    """Bad input found before anything ran; each line of the message is printed."""


@final
@attrs.frozen
class RunOptions:
    """Everything ``gpupool run`` was asked to do (the command line, validated)."""

    jobs_file: Path
    max_parallel: int | None = None
    gpus: int = 1
    memory_mb: int = 0
    fake_gpus: int | None = None
    #: The machine-wide ledger to join (``None``: the default one for real GPUs,
    #: none for fake GPUs).
    ledger: Path | None = None
    journal: Path | None = None
    log_dir: Path | None = None
    retries: int = 0
    timeout: float | None = None
    grace_period: float = DEFAULT_GRACE_PERIOD
    watch: bool = False
    retry_failed: bool = False
    #: Extra environment for every job (the demo puts its ``python`` on PATH).
    job_env: Mapping[str, str] = attrs.field(factory=dict)
    #: Where jobs run (default: the current directory; under ``ray``, on every node).
    job_cwd: Path | None = None
    #: ``--ray ADDRESS``: the GPU jobs run on the nodes of that Ray cluster.
    ray: str | None = None
    #: Under ``ray``: what each node calls for its GPUs (``None``: NVML).
    node_provider: Callable[[], Any] | None = None
    #: ``--tmux``: each job in a window of a detached tmux session (docs/jobs.md).
    tmux: bool = False
    #: ``--tmux-keep-failed``: seconds the window of a failed job stays open.
    tmux_keep_failed: float = DEFAULT_KEEP_FAILED

    @property
    def journal_path(self) -> Path:
        """``--journal``, or ``JOBS_FILE.journal.sqlite`` beside the jobs file."""
        if self.journal is not None:
            return self.journal
        return self.jobs_file.with_name(self.jobs_file.name + ".journal.sqlite")

    @property
    def log_path(self) -> Path:
        """``--log-dir``, or ``JOBS_FILE.logs`` beside the jobs file."""
        if self.log_dir is not None:
            return self.log_dir
        return self.jobs_file.with_name(self.jobs_file.name + ".logs")


# -- the command line ---------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gpupool run`` on an ``argparse`` subparsers object.

    The handler is stored as ``handler`` (``args.handler(args)`` returns the exit code).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a file of shell commands on the GPUs, resumably",
        description=(
            "Run JOBS_FILE, one shell command per line, sharing the GPUs between them. "
            "A line may start with resources: [gpus=2 mem=8G timeout=30m retries=1 "
            "priority=5 est=20m name=NAME]. Running the same command again resumes. "
            "See docs/jobs.md."
        ),
        epilog=(
            "exit codes: 0 every job succeeded, 1 a job failed or timed out, "
            "2 bad usage or input (nothing run), 130 interrupted with jobs unfinished. "
            "Inspect the journal with `gpupool journal show JOURNAL`."
        ),
    )
    parser.add_argument("jobs_file", type=Path, metavar="JOBS_FILE")
    parser.add_argument(
        "--max-parallel",
        type=int_arg(1),
        metavar="N",
        help="jobs running at once (default: the number of GPUs, at least 1)",
    )
    parser.add_argument(
        "--gpus",
        type=int_arg(0),
        default=1,
        metavar="N",
        help="GPUs for a line without gpus= (default 1; 0 runs such lines on the CPU)",
    )
    parser.add_argument(
        "--mem",
        type=memory_arg,
        default=0,
        metavar="SIZE",
        help="free memory each GPU must have, for a line without mem= (e.g. 8G)",
    )
    add_fake_gpus_option(parser, use="for trying things out; with --ray, on every node")
    add_ledger_option(parser, note="none for --fake-gpus unless given")
    parser.add_argument(
        "--journal",
        type=Path,
        metavar="PATH",
        help="SQLite journal (default: JOBS_FILE.journal.sqlite beside the jobs file)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="one log per job, named after its command (default: JOBS_FILE.logs beside the jobs file)",
    )
    parser.add_argument(
        "--retries",
        type=int_arg(0),
        default=0,
        metavar="N",
        help="extra attempts for a failed job, for a line without retries=",
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg("timeout"),
        metavar="DURATION",
        help="time limit per attempt for a line without timeout= (e.g. 90s, 30m, 2h)",
    )
    parser.add_argument(
        "--grace",
        type=seconds_arg,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help=f"seconds between SIGTERM and SIGKILL (default {DEFAULT_GRACE_PERIOD:g})",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="keep running and pick up jobs added to JOBS_FILE (anywhere); stop with Ctrl-C",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the jobs that failed or timed out in an earlier run",
    )
    parser.add_argument(
        "--tmux",
        action="store_true",
        help="start each job in a window of a detached tmux session named after JOBS_FILE, "
        "to look in with `gpupool attach KEY` (the tmux server: $TMUX, else $TMUX_TMPDIR)",
    )
    parser.add_argument(
        "--tmux-keep-failed",
        type=seconds_arg,
        default=DEFAULT_KEEP_FAILED,
        metavar="SECONDS",
        help="with --tmux: how long the window of a failed job stays open "
        f"(default {DEFAULT_KEEP_FAILED:g}; a job that succeeded closes its window at once)",
    )
    add_ray_options(
        parser,
        use="run the GPU jobs on the nodes of (their logs come back to --log-dir; "
        "gpus=0 jobs run here)",
    )
    parser.set_defaults(handler=command)
    return parser


def command(args: argparse.Namespace) -> int:
    """The ``gpupool run`` handler: the exit code."""
    try:
        provider = node_provider(args)
    except ValueError as error:
        print(f"gpupool run: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_jobs(
        RunOptions(
            jobs_file=args.jobs_file,
            max_parallel=args.max_parallel,
            gpus=args.gpus,
            memory_mb=args.mem,
            # Under --ray the fake GPUs are the nodes' (node_provider), not this machine's.
            fake_gpus=None if args.ray is not None else args.fake_gpus,
            ledger=args.ledger,
            journal=args.journal,
            log_dir=args.log_dir,
            retries=args.retries,
            timeout=args.timeout,
            grace_period=args.grace,
            watch=args.watch,
            retry_failed=args.retry_failed,
            ray=args.ray,
            node_provider=provider,
            tmux=args.tmux,
            tmux_keep_failed=args.tmux_keep_failed,
        )
    )


def run_jobs(options: RunOptions, *, out: Console | None = None, err: Console | None = None) -> int:
    """Run the jobs file of ``options`` to the end (or to Ctrl-C); the exit code."""
    out = _console(stderr=False) if out is None else out
    err = _console(stderr=True) if err is None else err
    session = _Session(options, out, err)
    try:
        return anyio.run(session.main)
    except KeyboardInterrupt:  # before the signal handlers were installed
        err.print("gpupool run: interrupted")
        return EXIT_INTERRUPTED
    except _UsageError as error:
        for line in str(error).splitlines():
            err.print(f"gpupool run: error: {line}", markup=False, soft_wrap=True)
        return EXIT_USAGE


def _console(*, stderr: bool) -> Console:
    # Messages are never wrapped (they are grepped); tables fit the width.
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # A log file or a pipe: wide enough for the summary table.
        console = Console(
            stderr=stderr, highlight=False, soft_wrap=True, width=max(console.width, 120)
        )
    return console


# -- one run ------------------------------------------------------------------


@attrs.define(eq=False)
class _Session:
    options: RunOptions
    out: Console
    err: Console
    progress: JobsProgress | None = None
    journal: Journal | None = None
    runner_journal: RunnerJournal | None = None
    pool: GPUResourcePool | RemoteGPUs | None = None
    handles: list[TaskHandle[dict[str, Any]]] = attrs.Factory(list)
    groups: set[int] = attrs.Factory(set)
    interrupted: bool = False
    bad_appended_lines: int = 0
    run_scope: anyio.CancelScope | None = None
    tmux: TmuxSession | None = None

    async def main(self) -> int:
        options = self.options
        if options.tmux:
            self.tmux = self._tmux_session()
        reader = JobsFileReader(
            options.jobs_file,
            JobDefaults(
                gpus=options.gpus,
                memory_mb=options.memory_mb,
                timeout=options.timeout,
                retries=options.retries,
            ),
        )
        try:
            first = await anyio.to_thread.run_sync(reader.read_new)
        except JobsFileError as error:
            raise _UsageError(str(error)) from None
        if not first.jobs and not first.problems and not options.watch:
            self.err.print(f"gpupool run: {options.jobs_file} has no jobs; nothing to do")
            return EXIT_OK
        async with contextlib.AsyncExitStack() as stack:
            problems = list(first.problems)
            if options.fake_gpus is not None or options.watch or any(j.gpus for j in first.jobs):
                await self._open_pool(stack, problems)
            # Syntax and capacity in one report, so the user fixes everything at once.
            check = self._capacity_check()
            source = str(options.jobs_file)
            for job in first.jobs:
                reason = check(job)
                if reason is not None:
                    problems.append(LineProblem(source, job.line, reason))
            if problems:
                problems.sort(key=lambda problem: problem.line)
                raise _UsageError("\n".join(map(str, problems)))
            await self._open_journal(stack)
            return await self._run(reader, list(first.jobs))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open_pool(
        self, stack: contextlib.AsyncExitStack, problems: list[LineProblem]
    ) -> None:
        """Open the pool; if there are no GPUs to use, say so along with ``problems``."""
        if self.options.ray is not None:
            await self._open_cluster(stack, problems, self.options.ray)
            return
        fake = self.options.fake_gpus
        ledger = self.options.ledger
        try:
            pool = GPUResourcePool(
                None if fake is None else FakeGPUProvider(count=fake),
                refresh_interval=0.25 if fake else 1.0,
                # Fake GPUs join a ledger only when one is named; real ones the default.
                ledger=DEFAULT if ledger is None else ledger,
            )
            self.pool = await stack.enter_async_context(pool)
        except (ProviderError, ImportError) as error:
            no_gpus = (
                f"cannot use the GPUs: {error} (to try gpupool without GPUs, add --fake-gpus N)"
            )
            raise _UsageError("\n".join([*map(str, problems), no_gpus])) from None
        except LedgerError as error:
            reason = f"cannot use the machine-wide ledger: {error}"
            raise _UsageError("\n".join([*map(str, problems), reason])) from None

    async def _open_cluster(
        self, stack: contextlib.AsyncExitStack, problems: list[LineProblem], address: str
    ) -> None:
        """Connect to the Ray cluster and open an agent per node (``--ray``)."""
        try:
            from .run_ray import open_cluster

            opening = open_cluster(
                stack, address, provider=self.options.node_provider, ledger=self.options.ledger
            )
            self.pool = await stack.enter_async_context(opening)
        except (ConnectionError, TimeoutError, ProviderError, ImportError) as error:
            reason = f"cannot use the Ray cluster at {address}: {' '.join(str(error).split())}"
            raise _UsageError("\n".join([*map(str, problems), reason])) from None
        except TypeError as error:  # a --provider that cannot be sent to the nodes
            raise _UsageError("\n".join([*map(str, problems), str(error)])) from None

    async def _open_journal(self, stack: contextlib.AsyncExitStack) -> None:
        """Make the log directory, open the journal and take over a dead run's."""
        options = self.options
        created = await anyio.to_thread.run_sync(_make_log_dir, options.log_path)
        try:
            self.journal = await anyio.to_thread.run_sync(_open_journal, options.journal_path)
        except _UsageError:
            await anyio.to_thread.run_sync(_remove_dirs, created)
            raise
        stack.callback(self.journal.close)
        self.runner_journal = RunnerJournal(self.journal, retry_failed=options.retry_failed)
        self.runner_journal.open()  # kills a dead run's leftover jobs
        killed = self.runner_journal.killed_leftovers
        if killed:
            self.err.print(
                f"gpupool run: killed {len(killed)} leftover process group(s) "
                "of an earlier run that died"
            )

    def _tmux_session(self) -> TmuxSession:
        """The run's tmux session (``--tmux``), checked before anything runs."""
        if self.options.ray is not None:
            raise _UsageError("--tmux and --ray cannot go together: --ray jobs run on the nodes")
        try:
            tmux_command()
        except TmuxError as error:
            raise _UsageError(str(error)) from None
        return TmuxSession(
            session_name(self.options.jobs_file),
            owner=os.path.abspath(self.options.journal_path),
            keep_failed_s=self.options.tmux_keep_failed,
        )

    def _window(self, job: JobSpec) -> TmuxWindow | None:
        """Under ``--tmux``, the window ``job`` starts in (its state beside its log)."""
        if self.tmux is None:
            return None
        state = self._log_file(job).with_name(job.log_name + ".tmux")
        return self.tmux.window(window_name(job.label), state_path=state)

    def _capacity_check(self) -> JobCheck:
        """Why a job could never start on the GPUs as they are now, or None.

        The GPUs are read here, on the event loop; the check itself may run
        in the jobs file reader's worker thread.
        """
        if isinstance(self.pool, RemoteGPUs):
            from .run_ray import cluster_capacity_problem, node_statistics

            nodes = node_statistics(self.pool)
            return functools.partial(cluster_capacity_problem, nodes=nodes)
        gpus = () if self.pool is None else self.pool.statistics().gpus
        return functools.partial(capacity_problem, gpus=gpus)

    async def _run(self, reader: JobsFileReader, jobs: list[JobSpec]) -> int:
        assert self.runner_journal is not None
        journal = self.runner_journal
        # --max-parallel, else the runner's own rule over the open pool (its cap, else
        # its GPUs); with no GPUs at all, one job at a time.
        max_parallel = self.options.max_parallel
        if max_parallel is None and self.pool is None:
            max_parallel = 1
        runner = ParallelRunner(self.pool, max_parallel=max_parallel, journal=journal)
        progress = self.progress = JobsProgress(
            self.err, runner.max_parallel, self.options.log_path
        )
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._handle_signals)
            progress.start()
            self.run_scope = anyio.CancelScope()
            try:
                with self.run_scope:
                    async with runner:
                        runner.subscribe(self._on_event)
                        self._submit(runner, jobs)
                        if self.options.watch:
                            await self._watch(runner, reader)
                        else:
                            for handle in list(self.handles):
                                await handle.wait()
            finally:
                progress.stop()
                outer.cancel_scope.cancel()
        return self._finish()

    def _submit(self, runner: ParallelRunner, jobs: list[JobSpec]) -> None:
        assert self.progress is not None
        self.progress.add_jobs({job.key: job for job in jobs})
        on_nodes: Any = None
        if self.options.ray is not None:
            # GPU jobs run on the nodes; CPU-only ones here, as the runner keeps them local.
            from .run_ray import node_jobs

            options = self.options
            on_nodes = node_jobs(options.job_env, options.job_cwd, options.grace_period)
        for job in jobs:
            handle = runner.submit(
                self._run_job if on_nodes is None or not job.gpus else on_nodes,
                self._journal_item(job),
                resources=job.resources,
                timeout=job.timeout,
                retries=job.retries,
                retry_backoff=1.0,
                key=job.key,
            )
            handle.add_done_callback(self._on_done)
            self.handles.append(handle)

    def _journal_item(self, job: JobSpec) -> dict[str, Any]:
        """The task's item: what the journal keeps of the job, so that
        ``gpupool journal show``/``export`` tell which line, command and log it is."""
        return {
            "key": job.key,
            "file": str(self.options.jobs_file),
            "line": job.line,
            "command": job.command,
            "log": str(self._log_file(job)),
        }

    def _log_file(self, job: JobSpec) -> Path:
        return self.options.log_path / job.log_name

    def _on_done(self, handle: TaskHandle[dict[str, Any]]) -> None:
        if self.progress is not None and handle.result is not None:
            self.progress.job_finished(handle.result)

    async def _watch(self, runner: ParallelRunner, reader: JobsFileReader) -> None:
        last_warning: str | None = None
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            try:
                new = await anyio.to_thread.run_sync(
                    functools.partial(
                        reader.read_new, complete_only=True, check=self._capacity_check()
                    )
                )
            except JobsFileError as error:
                if str(error) != last_warning:  # say it once, not twice a second
                    last_warning = str(error)
                    self.err.print(f"gpupool run: warning: {error}", markup=False)
                continue
            last_warning = None
            for problem in new.problems:
                self.bad_appended_lines += 1
                self.err.print(
                    f"gpupool run: error: {problem} (line skipped)", markup=False, soft_wrap=True
                )
            if new.jobs:
                self._submit(runner, list(new.jobs))

    async def _run_job(
        self, item: dict[str, Any], allocation: GPUAllocation | None
    ) -> dict[str, Any]:
        assert self.progress is not None
        job = self.progress.jobs[item["key"]]
        log = self._log_file(job)
        started: list[int] = []

        def on_start(pid: int) -> None:
            # For a second Ctrl-C. The journal records the group itself: run_process
            # tells it, as it tells the pool (gpupool._process.started).
            started.append(pid)
            self.groups.add(pid)

        env = {**self.options.job_env, "GPUPOOL_JOB_KEY": job.key}
        if allocation is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-only job must not touch the GPUs
        window = self._window(job)
        try:
            result = await run_process(
                job.command,
                allocation=allocation,
                log_path=log,
                env=env,
                grace_period=self.options.grace_period,
                cwd=self.options.job_cwd,
                on_start=on_start,
                check=False,  # checked below, without the output's tail
                _launcher=window,  # None: directly, as our child
            )
        finally:
            for pid in started:
                self.groups.discard(pid)
        if window is not None and window.lost is not None:
            raise TmuxError(f"the job was ended: {window.lost}")
        result.check(with_tail=False)  # the summary names the log; outcomes stay one line
        return {
            "returncode": result.returncode,
            "pid": result.pid,
            "duration_s": round(result.duration_s, 3),
            "log": str(log),
        }

    def _on_event(self, event: TaskEvent) -> None:
        progress = self.progress
        if progress is None or event.key not in progress.jobs:
            return
        if event.resources is not None:  # grown after running out of memory, or learned
            progress.job_resources(event.key, event.resources)
        if event.status is TaskStatus.RUNNING:
            progress.job_started(event.key, event.gpu_indices, event.attempt)
        elif event.status is TaskStatus.RETRYING:
            progress.job_retrying(event.key, event.error)

    async def _handle_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if not self.interrupted:
                    self.interrupted = True
                    self.err.print(
                        "gpupool run: stopping: ending the running jobs "
                        f"(up to {self.options.grace_period:g}s; Ctrl-C again to force)"
                    )
                    if self.run_scope is not None:
                        self.run_scope.cancel()
                else:
                    for pgid in list(self.groups):
                        killpg_quietly(pgid, signal.SIGKILL)
                    self.err.print("gpupool run: forced stop; the next run resumes")
                    os._exit(EXIT_INTERRUPTED)

    def _finish(self) -> int:
        progress = self.progress
        assert progress is not None
        if progress.jobs:
            summary = progress.summary(self.options.log_path, self.out.width)
            self.out.print(summary, soft_wrap=False)
        counts = progress.counts()
        not_run = len(progress.jobs) - len(progress.results)
        self.out.print(
            f"{counts['done']} succeeded, {counts['failed']} failed"
            + (f", {counts['cancelled']} interrupted" if counts["cancelled"] else "")
            + (f", {not_run} not run" if not_run else "")
        )
        earlier_failures = sum(1 for r in progress.results.values() if r.from_journal and not r.ok)
        if earlier_failures:
            self.out.print(
                f"{earlier_failures} job(s) failed in an earlier run and were not run again; "
                "add --retry-failed to run them"
            )
        all_ok = (
            all(r.ok for r in progress.results.values())
            and not not_run
            and not self.bad_appended_lines
        )
        # Under --watch, Ctrl-C is how a run ends: it is an interruption only
        # when it stopped jobs that were still running or queued.
        cut_short = bool(counts["cancelled"] or not_run)
        if self.interrupted and (cut_short or not self.options.watch):
            return EXIT_INTERRUPTED
        return EXIT_OK if all_ok else EXIT_FAILED


# -- capacity -------------------------------------------------------------------


def capacity_problem(job: JobSpec, gpus: Sequence[GPUStatistics]) -> str | None:
    """Why ``job`` could never start on ``gpus``, in the jobs file's words, or None.

    The pool's rule for an impossible request (see ``UnsatisfiableRequest``):
    ``gpus=`` healthy GPUs, each with at least ``mem=`` memory in total. It is
    checked before anything runs, so such a job is reported with the other
    bad lines instead of being run, failed and journaled as failed.
    """
    if job.gpus == 0:
        return None
    healthy = [gpu for gpu in gpus if gpu.healthy]
    if job.gpus > len(gpus):
        count = len(gpus)
        return (
            f"gpus={job.gpus} but there {'is' if count == 1 else 'are'} only "
            f"{count} GPU{'' if count == 1 else 's'}"
        )
    if job.gpus > len(healthy):
        return f"gpus={job.gpus} but only {len(healthy)} of the {len(gpus)} GPUs are healthy"
    big_enough = sum(1 for gpu in healthy if gpu.memory_total_mb >= job.memory_mb)
    if big_enough >= job.gpus:
        return None
    largest = size_text(max(gpu.memory_total_mb for gpu in healthy))
    if job.gpus == 1:
        return (
            f"mem={size_text(job.memory_mb)} but no GPU has that much memory "
            f"(the largest has {largest})"
        )
    return (
        f"gpus={job.gpus} mem={size_text(job.memory_mb)} but only {big_enough} "
        f"GPU{'' if big_enough == 1 else 's'} {'has' if big_enough == 1 else 'have'} "
        f"that much memory (the largest has {largest})"
    )


# -- files ----------------------------------------------------------------------


def _make_log_dir(path: Path) -> list[Path]:
    """Create ``path`` (and parents) and check it is writable; the directories made."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        _remove_dirs(missing)
        raise _UsageError(
            f"cannot write the log directory {path}: {error.strerror or error}"
        ) from None
    return missing


def _remove_dirs(created: list[Path]) -> None:
    for directory in created:  # deepest first
        with contextlib.suppress(OSError):
            directory.rmdir()


def _open_journal(path: Path) -> Journal:
    try:
        return Journal(path)
    except (JournalError, GPUPoolError) as error:
        raise _UsageError(f"cannot use the journal: {error}") from None
    except OSError as error:
        raise _UsageError(f"cannot use the journal {path}: {error.strerror or error}") from None
