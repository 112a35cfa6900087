"""``gpupool logs JOB``: print, or follow, the log of one job of a ``gpupool run``.

The same for both launch modes: the log is the file ``gpupool run`` appends
the job's output to, every attempt of every run, in order (the wrapper of
``--tmux`` writes exactly what direct mode writes). The job is found as
``gpupool._cli.job_lookup`` says (key, name, line number or key prefix).

``--follow`` prints what the log holds, then what is appended, until the
job ends: its journal row reaches a final state (retries are followed
through), or the run that owns the journal is gone. It waits for a job that
has not started yet. Its exit code is the job's: 0 when it succeeded, 1
otherwise, so ``gpupool logs JOB --follow && next-step`` works. Without
``--follow`` the exit code is 0 once the log is printed.

Exit codes: 0, 1 as above (also: a job whose log does not exist yet, without
``--follow``), 2 no such journal or job.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import IO, Any

from .._core.errors import JournalError
from .._core.results import TaskStatus
from .args import int_arg
from .job_lookup import FoundJob, JobLookupError, add_job_arguments, find_job, job_of_arguments

__all__ = ["add_parser", "command"]

#: How often ``--follow`` reads the log and looks at the journal.
FOLLOW_INTERVAL = 0.2
_CHUNK = 1 << 16


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "logs",
        help="print or follow the log of one job of a gpupool run",
        description=(
            "Print the log of JOB (every attempt, as appended), for a run with or without "
            "--tmux. JOB is a key or name, a line number of the jobs file, or a key prefix."
        ),
        epilog=(
            "exit codes: 0 printed (with --follow: the job succeeded), 1 the job failed "
            "(--follow) or has no log yet, 2 no such journal or job"
        ),
    )
    add_job_arguments(parser)
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing what the job writes until it ends; exit 0 if it succeeded, else 1",
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=int_arg(0),
        metavar="N",
        help="start with the last N lines only (default: the whole log)",
    )
    parser.set_defaults(handler=command)
    return parser


def command(args: argparse.Namespace) -> int:
    job = job_of_arguments(args, "logs")
    if job is None:
        return 2
    out = sys.stdout.buffer
    if not args.follow:
        if job.log is None or not job.log.exists():
            print(
                f"gpupool logs: job {job.key} has no log yet ({job.status.value})", file=sys.stderr
            )
            return 1
        with job.log.open("rb") as log:
            _start(log, args.lines)
            _copy(log, out)
        return 0
    return _follow(job, args, out)


def _start(log: IO[bytes], lines: int | None) -> None:
    """Seek ``log`` to where its last ``lines`` lines begin (all of it for None)."""
    if lines is None:
        return
    end = log.seek(0, os.SEEK_END)
    position, data = end, b""
    while position > 0 and lines > 0:
        step = min(_CHUNK, position)
        position -= step
        log.seek(position)
        data = log.read(step) + data
        # The newline that ends the last line starts no line after it.
        body = data[:-1] if data.endswith(b"\n") else data
        if body.count(b"\n") >= lines:
            cut = len(body)
            for _ in range(lines):
                cut = body.rindex(b"\n", 0, cut)
            log.seek(position + cut + 1)
            return
    log.seek(position if lines > 0 else end)


def _copy(log: IO[bytes], out: IO[bytes]) -> bool:
    """Write what ``log`` has from where it is; whether there was anything."""
    copied = False
    while chunk := log.read(_CHUNK):
        out.write(chunk)
        copied = True
    out.flush()
    return copied


def _follow(job: FoundJob, args: argparse.Namespace, out: IO[bytes]) -> int:
    log: IO[bytes] | None = None
    try:
        while True:
            if log is None and job.log is not None and job.log.exists():
                log = job.log.open("rb")
                _start(log, args.lines)
            if log is not None:
                _copy(log, out)
            if not job.running:
                break
            time.sleep(FOLLOW_INTERVAL)
            job = find_job(args.job, job.journal, log_dir=args.log_dir)
        if log is None and job.log is not None and job.log.exists():
            log = job.log.open("rb")  # started and ended between two looks
            _start(log, args.lines)
        if log is not None:
            _copy(log, out)
    except (JobLookupError, JournalError) as error:
        print(f"gpupool logs: error: {error}", file=sys.stderr)
        return 2
    finally:
        if log is not None:
            log.close()
    if job.status is TaskStatus.SUCCEEDED:
        return 0
    if job.status.is_final:
        print(f"gpupool logs: job {job.key} {job.status.value.replace('_', ' ')}", file=sys.stderr)
    else:
        print(
            f"gpupool logs: job {job.key} is {job.status.value.replace('_', ' ')} but the run "
            "that owns its journal has gone; the next gpupool run resumes it",
            file=sys.stderr,
        )
    return 1
