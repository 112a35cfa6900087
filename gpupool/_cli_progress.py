"""What ``gpupool run`` shows while it works, and the table it ends with.

One subscriber of the runner's events. On a terminal it redraws a small
panel (running jobs with their GPUs, counts, ETA) a few times a second; when
the output is a file or a pipe it prints one line per job that starts or
ends instead, so logs of unattended runs stay readable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import attrs
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._jobs import JobSpec
from ._tasks import TaskResult, TaskStatus

__all__ = ["JobsProgress"]

_STYLE = {
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "red",
    TaskStatus.TIMED_OUT: "red",
    TaskStatus.CANCELLED: "yellow",
}


@attrs.define(eq=False)
class _Running:
    job: JobSpec
    gpus: tuple[int, ...]
    started: float
    attempt: int


def _format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _gpus_text(gpus: tuple[int, ...]) -> str:
    return ",".join(map(str, gpus)) if gpus else "cpu"


@attrs.define(eq=False)
class JobsProgress:
    """Counts and running jobs of one ``gpupool run``, shown on ``console``."""

    console: Console
    max_parallel: int
    jobs: dict[str, JobSpec] = attrs.Factory(dict)
    running: dict[str, _Running] = attrs.Factory(dict)
    results: dict[str, TaskResult] = attrs.Factory(dict)
    durations: list[float] = attrs.Factory(list)
    started_at: float = attrs.Factory(time.monotonic)
    _live: Live | None = None

    # -- what happened --------------------------------------------------------

    def add_jobs(self, jobs: Mapping[str, JobSpec]) -> None:
        self.jobs.update(jobs)
        self._refresh()

    def job_started(self, key: str, gpus: tuple[int, ...], attempt: int) -> None:
        job = self.jobs[key]
        self.running[key] = _Running(job, gpus, time.monotonic(), attempt)
        if self._live is None:
            retry = f" (attempt {attempt})" if attempt > 1 else ""
            self.console.print(
                f"[bold]start[/] line {job.line} on GPU {_gpus_text(gpus)}{retry}: {job.label}",
                highlight=False,
                soft_wrap=True,
            )
        self._refresh()

    def job_retrying(self, key: str, error: str | None) -> None:
        running = self.running.pop(key, None)
        if running is not None and self._live is None:
            self.console.print(
                f"[yellow]retry[/] line {running.job.line}: {_failure_tail(error or 'failed')}",
                highlight=False,
                soft_wrap=True,
            )
        self._refresh()

    def job_finished(self, result: TaskResult) -> None:
        self.running.pop(result.key, None)
        self.results[result.key] = result
        if result.duration_s is not None and not result.from_journal:
            self.durations.append(result.duration_s)
        if not result.from_journal:  # on a terminal, printed above the live panel
            job = self.jobs[result.key]
            style = _STYLE.get(result.status, "")
            self.console.print(
                f"[{style}]{result.status.value}[/] line {job.line}: {job.label} "
                f"({_describe(result)})",
                highlight=False,
                soft_wrap=True,
            )
        self._refresh()

    # -- showing it -----------------------------------------------------------

    def start(self) -> None:
        if self.console.is_terminal:
            self._live = Live(
                console=self.console,
                get_renderable=self._render,
                refresh_per_second=4,
                transient=True,
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def counts(self) -> dict[str, int]:
        done = sum(1 for r in self.results.values() if r.ok)
        cancelled = sum(1 for r in self.results.values() if r.status is TaskStatus.CANCELLED)
        return {
            "done": done,
            "failed": len(self.results) - done - cancelled,
            "cancelled": cancelled,
            "running": len(self.running),
            "queued": len(self.jobs) - len(self.results) - len(self.running),
        }

    def eta_seconds(self) -> float | None:
        """Mean duration of this run's finished jobs times the waves still to come."""
        if not self.durations:
            return None
        counts = self.counts()
        mean = sum(self.durations) / len(self.durations)
        left_in_running = sum(
            max(0.0, mean - (time.monotonic() - r.started)) for r in self.running.values()
        )
        return (counts["queued"] * mean + left_in_running) / max(1, self.max_parallel)

    def _render(self) -> RenderableType:
        counts = self.counts()
        eta = self.eta_seconds()
        header = Text.assemble(
            ("gpupool run  ", "bold"),
            (f"{counts['done']} done", "green"),
            "  ",
            (f"{counts['failed']} failed", "red" if counts["failed"] else ""),
            f"  {counts['running']} running  {counts['queued']} queued",
            f"  elapsed {_format_seconds(time.monotonic() - self.started_at)}",
            f"  ETA {_format_seconds(eta)}" if eta is not None else "",
        )
        table = Table(box=None, show_edge=False, pad_edge=False)
        table.add_column("line", justify="right")
        table.add_column("GPUs")
        table.add_column("for", justify="right")
        table.add_column("job", overflow="ellipsis", no_wrap=True)
        now = time.monotonic()
        for running in sorted(self.running.values(), key=lambda r: r.job.line):
            table.add_row(
                str(running.job.line),
                _gpus_text(running.gpus),
                _format_seconds(now - running.started),
                running.job.label,
            )
        return Group(header, table) if self.running else header

    def summary(self, log_dir: Path) -> Table:
        """One row per job, in file order."""
        table = Table(title="gpupool run: summary", title_justify="left")
        for name in ("line", "status", "tries", "GPUs", "time"):
            table.add_column(name, no_wrap=True, justify="right" if name != "status" else "left")
        table.add_column("outcome", no_wrap=True)
        table.add_column("job", overflow="ellipsis", no_wrap=True, min_width=12, max_width=48)
        for job in sorted(self.jobs.values(), key=lambda j: j.line):
            result = self.results.get(job.key)
            if result is None:
                table.add_row(str(job.line), "not run", "", "", "", "", job.label)
                continue
            status = result.status.value + (" (earlier run)" if result.from_journal else "")
            table.add_row(
                str(job.line),
                Text(status, style=_STYLE.get(result.status, "")),
                str(result.attempts),
                _gpus_text(result.gpu_indices) if result.gpu_indices or not job.gpus else "",
                _format_seconds(result.duration_s) if result.duration_s is not None else "",
                _describe(result),
                job.label,
            )
        table.caption = f"logs: {log_dir}"
        table.caption_justify = "left"
        return table


def _describe(result: TaskResult) -> str:
    if result.ok:
        return "exit code 0"
    if result.status is TaskStatus.CANCELLED:
        return "interrupted (runs again next time)"
    return _failure_tail(result.error or result.status.value)


def _failure_tail(text: str) -> str:
    """``"ProcessFailed: command '...' failed: exit code 3"`` -> ``"exit code 3"``."""
    _, sep, tail = text.rpartition(" failed: ")
    return tail if sep else text
