"""``gpupool journal``: look into a task journal without disturbing its runner.

``show`` prints status counts and the failures, ``export`` writes every task
as JSON lines or CSV, ``plot`` draws the run as a timeline (``gpupool._cli.plot``),
``unlock`` clears the owner of a journal whose owner cannot be checked from
this host. ``show``, ``export`` and ``plot`` open the file read-only, so they
work while a runner owns it (WAL lets readers and the writer go on side by
side), on every schema version this gpupool reads (they never upgrade it).

Wiring: `add_parser` adds the ``journal`` command to an argparse subparsers
object and sets ``handler`` (arguments -> exit code), the convention of
``gpupool._cli.main``. Errors print one line ``gpupool: error: ...`` to stderr and
return exit code 2, a damaged journal and a missing matplotlib (``plot``) included (SQLite's "database disk image
is malformed", or a row the journal cannot decode). A reader that goes away
(``gpupool journal export J | head``) is a normal end: `BrokenPipeError` is
left to ``gpupool._cli.main.main``, which exits 0 quietly.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._core.errors import JournalError
from .._core.results import TaskStatus
from .._journal.history import read_only
from .._journal.owner import ProcessIdentity, is_alive
from .._journal.schema import (
    TaskRecord,
    check_header,
    check_schema,
    count_statuses,
    read_events,
    read_records,
)
from .._journal.timeline import build_timeline
from .._system.files import atomic_file
from .args import int_arg
from .console import OutputConsole
from .plot import MissingMatplotlib, format_of, render

__all__ = ["add_parser", "main", "run"]

EXPORT_FIELDS = (
    "key",
    "fn",
    "status",
    "attempts",
    "starts",
    "interrupted",
    "gpu_indices",
    "duration_s",
    "created_at",
    "updated_at",
    "finished_at",
    "item",
    "value",
    "error",
    "traceback",
    "learned_resources",
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "journal",
        help="inspect a task journal: status counts, failures, export",
        description="Inspect the SQLite journal a runner writes (ParallelRunner(journal=...)).",
    )
    commands = parser.add_subparsers(title="journal commands", dest="journal_command")
    commands.required = True

    show = commands.add_parser("show", help="status counts and failed tasks")
    show.add_argument("file", metavar="FILE", help="the journal file")
    show.add_argument(
        "--errors",
        type=int_arg(0),
        default=20,
        metavar="N",
        help="failed tasks to list (default 20)",
    )

    export = commands.add_parser("export", help="every task as JSON lines or CSV")
    export.add_argument("file", metavar="FILE", help="the journal file")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument(
        "--output", "-o", metavar="PATH", help="write here instead of standard output"
    )
    export.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in TaskStatus],
        help="only tasks in this state (repeatable)",
    )

    plot = commands.add_parser(
        "plot",
        help="draw the run as a timeline (PNG, SVG or HTML)",
        description=(
            "Draw the run as a timeline: one lane per GPU and one for CPU-only tasks, a bar "
            "per attempt coloured by how it ended, arrows from a failed attempt to its retry, "
            "and how many tasks waited. Works on a finished journal and on one a run is "
            "writing (what runs is drawn up to now). Needs matplotlib: "
            "pip install 'gpupool[plot]'."
        ),
    )
    plot.add_argument("file", metavar="FILE", help="the journal file")
    plot.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        required=True,
        help="the picture to write: .png, .svg or .html (the extension chooses)",
    )
    plot.add_argument("--title", help="the picture's title (default: the journal's name and size)")

    unlock = commands.add_parser(
        "unlock",
        help="clear the owner of a journal whose runner is gone",
        description=(
            "Clear the recorded owner so another runner can open the journal. Refuses "
            "while the owner is alive on this host; for an owner on another host, make "
            "sure it is gone first."
        ),
    )
    unlock.add_argument("file", metavar="FILE", help="the journal file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``gpupool journal ...``; return the exit code."""
    try:
        if args.journal_command == "show":
            with read_only(args.file) as conn:
                _show(conn, args.file, args.errors, OutputConsole(highlight=False))
        elif args.journal_command == "export":
            with read_only(args.file) as conn:
                statuses = set(args.status or [s.value for s in TaskStatus])
                records = (r for r in read_records(conn) if r.status.value in statuses)
                if args.output is None:
                    _export(records, args.format, sys.stdout)
                else:
                    _export_to_file(records, args.format, args.output)
        elif args.journal_command == "plot":
            _plot(args.file, args.output, args.title)
        else:
            _unlock(args.file)
    except BrokenPipeError:
        raise  # not an error: the reader has all it wanted (see gpupool._cli.main.main)
    except sqlite3.DatabaseError as exc:
        _error(
            f"cannot read journal {args.file!r}: {exc} (the file is damaged; restore it "
            "from a copy, or try `sqlite3 FILE .recover`)"
        )
        return 2
    except (JournalError, OSError, ValueError, MissingMatplotlib) as exc:
        _error(exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        return 2
    return 0


def _error(message: str) -> None:
    """The one line a failed command prints (a message of many lines is joined)."""
    print(f"gpupool: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``gpupool journal`` on its own (for tests, and until the CLI registers it)."""
    parser = argparse.ArgumentParser(prog="gpupool")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def journal_owner(conn: sqlite3.Connection) -> ProcessIdentity | None:
    row = conn.execute(
        "SELECT pid, start_time, boot_id, hostname FROM gpupool_owner WHERE slot = 1"
    ).fetchone()
    return None if row is None else ProcessIdentity(*row)


def _show(conn: sqlite3.Connection, path: str, max_errors: int, console: Console) -> None:
    counts = count_statuses(conn)
    owner = journal_owner(conn)
    if owner is None:
        state = "not in use"
    else:
        alive = is_alive(owner)
        verdict = {True: "running", False: "dead; the next run takes over", None: "unknown"}
        state = f"owned by {owner.describe()} ({verdict[alive]})"
    total = sum(counts.values())
    console.print(f"journal {path}: {total} tasks, {state}", soft_wrap=True)
    table = Table("status", "tasks", box=None, pad_edge=False)
    for status, n in counts.items():
        if n or status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            table.add_row(status.value, str(n))
    console.print(table)
    tasks, interruptions = conn.execute(
        "SELECT count(*), coalesce(sum(interrupted), 0) FROM tasks WHERE interrupted > 0"
    ).fetchone()
    if tasks:
        console.print(
            f"{tasks} task(s) were cut short by a crash and queued again "
            f"({interruptions} interruption(s) in all)",
            soft_wrap=True,
        )
    records = list(read_records(conn))
    _show_learned(records, console)
    failed = [
        r
        for r in records
        if r.status in (TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED)
    ]
    if failed and max_errors:
        errors = Table(title="failures", box=None)
        errors.add_column("key", overflow="fold")
        errors.add_column("status", no_wrap=True)
        errors.add_column("attempts", no_wrap=True, justify="right")
        errors.add_column("job", overflow="fold")
        errors.add_column("error", overflow="fold")
        for r in failed[:max_errors]:
            first_line = (r.error or "").splitlines()[0] if r.error else ""
            errors.add_row(  # Text, not str: a key or command is never rich markup
                Text(r.key),
                r.status.value,
                str(r.attempts),
                Text(describe_item(r.item)),
                Text(first_line),
            )
        console.print(errors)
        if len(failed) > max_errors:
            console.print(f"... and {len(failed) - max_errors} more (see `gpupool journal export`)")


def _show_learned(records: list[TaskRecord], console: Console) -> None:
    """The tasks whose reservation out-of-memory retries grew: what they start with now."""
    grown = [r for r in records if r.learned_resources is not None]
    if not grown:
        return
    table = Table(title="memory learned from out-of-memory retries", box=None)
    table.add_column("key", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("job", overflow="fold")
    table.add_column("next start asks for", overflow="fold")
    for r in grown:
        assert r.learned_resources is not None
        table.add_row(
            Text(r.key), r.status.value, Text(describe_item(r.item)), r.learned_resources.describe()
        )
    console.print(table)


def _plot(path: str, output: str, title: str | None) -> None:
    format_of(output)  # a wrong extension is refused before anything is read
    with read_only(path) as conn:
        version = check_schema(conn, path)
        conn.execute("BEGIN")  # one snapshot of a journal that a live run writes on
        try:
            records = list(read_records(conn))
            events = list(read_events(conn, version))
            owner = journal_owner(conn)
        finally:
            conn.execute("COMMIT")
    # An owner that is alive (or on another host, which cannot be checked) is
    # running: what is open is drawn up to now. A dead one's is cut short.
    live = owner is not None and is_alive(owner) is not False
    timeline = build_timeline(records, events, now=time.time() if live else None, label=bar_label)
    if title is None:
        title = (
            f"{os.path.basename(path)}: {len(records)} tasks, {len(timeline.attempts)} attempts"
            + (f", live (owned by pid {owner.pid})" if live and owner is not None else "")
        )
    render(timeline, output, title=title)
    print(f"journal {path}: wrote {output}")


_DEFAULT_JOB_KEY = re.compile(r"job-[0-9a-f]{16}(~[0-9]+)?")  # jobs_file.py: no name=


def bar_label(record: TaskRecord) -> str:
    """What a task's bars say: a ``gpupool run`` job's name, else ``line N``; another
    task's item in a few words, else its key."""
    item = record.item
    if isinstance(item, dict) and isinstance(item.get("line"), int) and "command" in item:
        if _DEFAULT_JOB_KEY.fullmatch(record.key):
            return f"line {item['line']}"
        return record.key
    if item is None:
        return record.key
    text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 40 else text[:37] + "..."


def describe_item(item: Any) -> str:
    """A task's item in a few words: ``line 7: python train.py`` for a job of
    ``gpupool run``, the compact JSON of any other item, cut to 80 characters."""
    if isinstance(item, dict) and isinstance(item.get("line"), int) and "command" in item:
        return f"line {item['line']}: {item['command']}"
    if item is None:
        return ""
    text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def _row(record: TaskRecord) -> dict[str, Any]:
    return {
        "key": record.key,
        "fn": record.fn,
        "status": record.status.value,
        "attempts": record.attempts,
        "starts": record.starts,
        "interrupted": record.interrupted,
        "gpu_indices": list(record.gpu_indices),
        "duration_s": record.duration_s,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "finished_at": _iso(record.finished_at),
        "item": record.item,
        "value": record.value,
        "error": record.error,
        "traceback": record.traceback,
        "learned_resources": None
        if record.learned_resources is None
        else {
            "min_memory_mb": record.learned_resources.min_memory_mb,
            "exclusive": record.learned_resources.exclusive,
        },
    }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def _export(records: Iterator[TaskRecord], fmt: str, out: IO[str]) -> None:
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(_row(record), ensure_ascii=False) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = _row(record)
        # JSON text in a cell; value only for succeeded tasks (else empty).
        row["gpu_indices"] = json.dumps(row["gpu_indices"])
        row["item"] = json.dumps(row["item"], ensure_ascii=False)
        ok = record.status is TaskStatus.SUCCEEDED
        row["value"] = json.dumps(row["value"], ensure_ascii=False) if ok else None
        if row["learned_resources"] is not None:
            row["learned_resources"] = json.dumps(row["learned_resources"])
        writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _export_to_file(records: Iterator[TaskRecord], fmt: str, output: str) -> None:
    """Write to a temporary file beside ``output`` and rename it into place, so
    a failed export leaves no half-written file."""
    with atomic_file(output, "w", newline="", encoding="utf-8") as out:
        _export(records, fmt, out)


def _unlock(path: str) -> None:
    if not os.path.exists(path):
        raise JournalError(f"no journal at {path!r}")
    check_header(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {path!r}: {exc}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not check_schema(conn, path):
                raise JournalError(f"{path!r} is an empty file, not a gpupool journal")
            owner = journal_owner(conn)
            if owner is not None and is_alive(owner):
                raise JournalError(
                    f"journal {path!r} is in use by {owner.describe()}, which is alive; "
                    "stop it instead of unlocking"
                )
            conn.execute("DELETE FROM gpupool_owner")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise JournalError(f"cannot unlock journal {path!r}: {exc}") from None
    finally:
        conn.close()
    print(f"journal {path}: owner cleared" if owner else f"journal {path}: had no owner")
