"""Finding one job of a ``gpupool run`` for ``gpupool logs`` and ``gpupool attach``.

Both take the same selector and find the same journal as ``gpupool run``:

* the journal is ``--journal PATH``, else ``JOBS_FILE.journal.sqlite`` beside
  the jobs file given, else the one ``*.journal.sqlite`` of the current
  directory;
* the job is its key (a ``name=``, or ``job-`` and 16 hex digits), a line
  number of the jobs file (the line the job was on when it was first queued in
  this journal, as ``gpupool journal show`` prints it), or a unique prefix of a
  key (``job-f13e``, or just ``f13e``).

The journal is read only (WAL lets it be read while ``gpupool run`` writes
it). Its item of each job names its log as ``gpupool run`` wrote it, relative
to the directory the run was started in; that is found from here too (see
:func:`log_of`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, final

import attrs

from .._core.errors import JournalError
from .._core.results import TaskStatus
from .._journal.history import read_only
from .._journal.owner import is_alive
from .._journal.schema import TaskRecord, read_records
from .journal import journal_owner

__all__ = [
    "FoundJob",
    "JobLookupError",
    "add_job_arguments",
    "find_job",
    "job_of_arguments",
    "journal_path",
]


class JobLookupError(Exception):
    """No such journal or job, or a selector that names several jobs: one line to print."""


@final
@attrs.frozen
class FoundJob:
    """One job of a journal, as it is now."""

    record: TaskRecord
    journal: Path
    #: Its log, where it is from here (it may not exist yet: the job has not started).
    log: Path | None
    #: The run that owns the journal is alive (a job it has not finished is still going).
    run_alive: bool

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def running(self) -> bool:
        """Started or waiting to, and its run still going."""
        return self.run_alive and not self.record.status.is_final

    @property
    def status(self) -> TaskStatus:
        return self.record.status


def add_job_arguments(parser: Any) -> None:
    """The arguments ``logs`` and ``attach`` share: ``JOB [JOBS_FILE] [--journal] [--log-dir]``."""
    parser.add_argument(
        "job", metavar="JOB", help="the job: its key or name, its line number, or a key prefix"
    )
    parser.add_argument(
        "jobs_file",
        nargs="?",
        type=Path,
        metavar="JOBS_FILE",
        help="the jobs file the run ran (default: the one *.journal.sqlite here)",
    )
    parser.add_argument(
        "--journal", type=Path, metavar="PATH", help="the run's journal (as gpupool run --journal)"
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="the run's log directory (as gpupool run --log-dir)",
    )


def job_of_arguments(args: argparse.Namespace, command: str) -> FoundJob | None:
    """The job that :func:`add_job_arguments`'s arguments name; ``None`` once the reason
    there is none (no such journal or job) is printed, ``gpupool COMMAND: error: ...``,
    for the command to exit with code 2."""
    try:
        journal = journal_path(args.jobs_file, args.journal)
        return find_job(args.job, journal, log_dir=args.log_dir)
    except (JobLookupError, JournalError) as error:
        print(f"gpupool {command}: error: {error}", file=sys.stderr)
        return None


def journal_path(jobs_file: Path | None, journal: Path | None) -> Path:
    """The journal ``gpupool run JOBS_FILE [--journal PATH]`` used."""
    if journal is not None:
        return journal
    if jobs_file is not None:
        return jobs_file.with_name(jobs_file.name + ".journal.sqlite")
    here = sorted(Path().glob("*.journal.sqlite"))
    if len(here) == 1:
        return here[0]
    if not here:
        raise JobLookupError(
            "no journal here: give the jobs file (gpupool logs JOB JOBS_FILE) or --journal PATH"
        )
    names = ", ".join(path.name for path in here)
    raise JobLookupError(f"several journals here ({names}): give the jobs file or --journal PATH")


def find_job(selector: str, journal: Path, *, log_dir: Path | None = None) -> FoundJob:
    """The job ``selector`` names in ``journal``; :class:`JobLookupError` if none or several."""
    with read_only(str(journal)) as conn:
        records = list(read_records(conn))
        owner = journal_owner(conn)
    record = _select(selector, records, journal)
    alive = owner is not None and is_alive(owner) is not False
    return FoundJob(record, journal, log_of(record, journal, log_dir), alive)


def _line(record: TaskRecord) -> int | None:
    item = record.item
    line = item.get("line") if isinstance(item, dict) else None
    return line if isinstance(line, int) else None


def _select(selector: str, records: list[TaskRecord], journal: Path) -> TaskRecord:
    exact = [r for r in records if r.key == selector]
    if exact:
        return exact[0]
    if selector.isdigit():
        found = [r for r in records if _line(r) == int(selector)]
        what = f"line {selector}"
    else:
        found = [
            r for r in records if r.key.startswith(selector) or r.key.startswith("job-" + selector)
        ]
        what = f"a key starting with {selector!r}"
    if len(found) == 1:
        return found[0]
    if not found:
        raise JobLookupError(
            f"no job {selector!r} in {journal} (give a key, a name, a line number or a key "
            f"prefix; `gpupool journal show {journal}` lists the failed ones)"
        )
    raise JobLookupError(f"{len(found)} jobs have {what}: {_keys(found)}; give the key")


def _keys(records: Iterable[TaskRecord]) -> str:
    keys = [r.key for r in records]
    return ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")


def log_of(record: TaskRecord, journal: Path, log_dir: Path | None) -> Path | None:
    """Where the job's log is from here.

    The journal's item holds the log's path as ``gpupool run`` wrote it:
    relative to the directory the run started in, which need not be this
    one. Tried in turn: ``--log-dir`` and the log's file name; the path as
    written (absolute, or from the same directory); the path taken relative
    to the jobs file's directory, from the journal's directory (where the
    journal is by default, beside the jobs file). The first that exists, or
    the first candidate when none does yet (the job has not started).
    """
    item = record.item
    if not isinstance(item, dict) or not isinstance(item.get("log"), str):
        return None
    written = Path(item["log"])
    candidates = [] if log_dir is None else [log_dir / written.name]
    candidates.append(written)
    jobs_file = item.get("file")
    if not written.is_absolute() and isinstance(jobs_file, str):
        beside = os.path.relpath(written, Path(jobs_file).parent)
        candidates.append(journal.parent / beside)
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]
