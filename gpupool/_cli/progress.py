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
from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .._core.request import Resources
from .._core.results import TaskResult, TaskStatus
from .args import size_text
from .jobs_file import JobSpec

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
    #: Where the jobs' logs are; a failure's line then names its log.
    log_dir: Path | None = None
    jobs: dict[str, JobSpec] = attrs.Factory(dict)
    running: dict[str, _Running] = attrs.Factory(dict)
    results: dict[str, TaskResult] = attrs.Factory(dict)
    durations: list[float] = attrs.Factory(list)
    #: Jobs whose request is not the jobs file's: grown after running out of GPU
    #: memory, in this run or (learned by the journal) an earlier one.
    grown: dict[str, Resources] = attrs.Factory(dict)
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
                f"[bold]start[/] line {job.line} on GPU {_gpus_text(gpus)}{retry}: "
                f"{escape(job.label)}",
                highlight=False,
                soft_wrap=True,
            )
        self._refresh()

    def job_resources(self, key: str, resources: Resources) -> None:
        """The request job ``key`` makes now (from its events)."""
        if resources != self.jobs[key].resources:
            self.grown[key] = resources

    def job_retrying(self, key: str, error: str | None) -> None:
        running = self.running.pop(key, None)
        if running is not None and self._live is None:
            grown = self.grown.get(key)
            now = "" if grown is None else f"; next attempt: {_request_text(grown)}"
            self.console.print(
                f"[yellow]retry[/] line {running.job.line}: "
                f"{escape(_failure_tail(error or 'failed') + now)}",
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
            outcome = _describe(result)
            if not result.ok and self.log_dir is not None:
                outcome += f"; log: {self.log_dir / job.log_name}"
            self.console.print(
                f"[{style}]{result.status.value}[/] line {job.line}: {escape(job.label)} "
                f"({escape(outcome)})",
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
        table.add_column("line", justify="right", no_wrap=True, min_width=4)
        table.add_column("GPUs", no_wrap=True, min_width=4)
        table.add_column("for", justify="right", no_wrap=True, min_width=6)
        table.add_column("job", overflow="ellipsis", no_wrap=True, min_width=8)
        now = time.monotonic()
        for running in sorted(self.running.values(), key=lambda r: r.job.line):
            table.add_row(
                str(running.job.line),
                _gpus_text(running.gpus),
                _format_seconds(now - running.started),
                running.job.label,
            )
        return Group(header, table) if self.running else header

    def summary(self, log_dir: Path, width: int) -> RenderableType:
        """One entry per job, in file order, laid out for ``width`` columns.

        A table where it fits; below that, one short block per job. Either
        way no field is cut: the key fields (line, status, tries, GPUs, time)
        never wrap, and the outcome, the command and the log name fold onto
        more lines. (Rich shrinks the columns of a table that is too wide
        down to nothing, which is how this table once lost all but one.)
        """
        rows = [self._summary_row(job) for job in sorted(self.jobs.values(), key=lambda j: j.line)]
        caption = f"logs in {log_dir}"
        outcome_width = _outcome_width(rows)
        if width >= _table_width(rows, outcome_width):
            return _summary_table(rows, caption, outcome_width)
        return _summary_blocks(rows, caption)

    def _summary_row(self, job: JobSpec) -> _SummaryRow:
        result = self.results.get(job.key)
        if result is None:
            return _SummaryRow(str(job.line), "not run", "", "", "", "", job, "")
        outcome = _describe(result) + (" (earlier run)" if result.from_journal else "")
        grown = self.grown.get(job.key)
        if grown is not None and not result.from_journal:
            outcome += f" ({_request_text(grown)} after OOM)"
        return _SummaryRow(
            line=str(job.line),
            status=result.status.value,
            tries=str(result.attempts),
            gpus=_gpus_text(result.gpu_indices) if result.gpu_indices or not job.gpus else "",
            time=_format_seconds(result.duration_s) if result.duration_s is not None else "",
            outcome=outcome,
            job=job,
            style=_STYLE.get(result.status, ""),
        )


@attrs.frozen
class _SummaryRow:
    line: str
    status: str
    tries: str
    gpus: str
    time: str
    outcome: str
    job: JobSpec
    style: str

    def key_fields(self) -> tuple[str, ...]:
        return (self.line, self.status, self.tries, self.gpus, self.time)


_KEY_HEADERS = ("line", "status", "tries", "GPUs", "time")
#: The narrowest the job and log columns get before the blocks take over.
_FOLDED_MIN = 10
#: Outcomes up to this long stay on one line ("exit code 0 (earlier run)").
_OUTCOME_WHOLE = 25


def _outcome_width(rows: list[_SummaryRow]) -> int:
    longest = max((len(row.outcome) for row in rows), default=0)
    return max(_FOLDED_MIN, min(longest, _OUTCOME_WHOLE))


def _table_width(rows: list[_SummaryRow], outcome_width: int) -> int:
    """The narrowest the summary table can be with every key field whole."""
    widths = [len(header) for header in _KEY_HEADERS]
    for row in rows:
        widths = [max(w, len(field)) for w, field in zip(widths, row.key_fields(), strict=True)]
    columns = len(_KEY_HEADERS) + 3
    gaps = 2 * (columns - 1)  # one blank on each side of every inner border
    return sum(widths) + outcome_width + 2 * _FOLDED_MIN + gaps


def _summary_table(rows: list[_SummaryRow], caption: str, outcome_width: int) -> Table:
    table = Table(
        title="gpupool run: summary",
        title_justify="left",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for name in _KEY_HEADERS:
        justify: JustifyMethod = "left" if name == "status" else "right"
        table.add_column(name, justify=justify, no_wrap=True)
    # No min_width on folded columns: rich 13-15 then wraps a cell wider than
    # its column and crops the rest (characters of a log name went missing).
    # The width check in `summary` leaves them room instead.
    short = all(len(row.outcome) <= outcome_width for row in rows)
    table.add_column("outcome", no_wrap=short, overflow="fold")
    table.add_column("job", overflow="fold")
    table.add_column("log", overflow="fold")
    for row in rows:
        table.add_row(
            row.line,
            Text(row.status, style=row.style),
            row.tries,
            row.gpus,
            row.time,
            # Text, not str: a command's "[b]" is text, not rich markup.
            Text(row.outcome),
            Text(row.job.command),
            Text(row.job.log_name),
        )
    return table


def _summary_blocks(rows: list[_SummaryRow], caption: str) -> RenderableType:
    """The summary for a narrow terminal: a few short lines per job."""
    parts: list[RenderableType] = [Text("gpupool run: summary", overflow="fold")]
    for row in rows:
        # key=value tokens: a narrow line wraps between fields, never inside one.
        head = Text.assemble(
            f"line={row.line}  ",
            (row.status, row.style),
            f"  tries={row.tries or '-'}  GPUs={row.gpus or '-'}  time={row.time or '-'}",
        )
        head.overflow = "fold"
        parts.append(head)
        for label, value in (
            ("outcome", row.outcome),
            ("job", row.job.command),
            ("log", row.job.log_name),
        ):
            if value:
                parts.append(Text(f"  {label}: {value}", overflow="fold"))
    parts.append(Text(caption, overflow="fold"))
    return Group(*parts)


def _request_text(request: Resources) -> str:
    """A grown request as the jobs file would write it: ``mem=12G`` or ``exclusive``."""
    return "exclusive" if request.exclusive else f"mem={size_text(request.min_memory_mb)}"


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
