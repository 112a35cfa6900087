"""The jobs file of ``gpupool run``: one shell command per line.

Syntax (docs/jobs.md has the user's version)::

    # comments and blank lines are ignored
    python train.py --lr 0.1                      # one whole GPU (or --gpus N)
    [gpus=2 mem=20G timeout=2h retries=1] python train_big.py
    [gpus=0] python make_report.py                # CPU only
    [name=baseline priority=5] python train.py --baseline
    [est=20m] python quick_eval.py                # expected to take about 20 minutes

A line that starts with ``[`` directly followed by a letter carries resources
up to the first ``]``; ``[ -f x ]`` (the shell's test, with a blank) and
``[[`` are commands as usual. The command is the rest of the line, passed to
``/bin/sh -c`` as is.

Keys: a job's key is its ``name=``, or ``job-`` and 16 hex digits of the
SHA-256 of its command text; the second and later copies of the same command
get ``~2``, ``~3``... So keys do not move when lines are inserted or comments
edited, a journal recognises finished jobs across runs, and a command listed
twice runs twice. Resources are not part of the key: giving a job more memory
and running again does not re-run it if it already succeeded.

Each job logs to :attr:`JobSpec.log_name`, a file name derived from its key
(so stable in the same way) that a person can read.

Everything here is pure (text in, jobs out) except :class:`JobsFileReader`,
which reads a file and, for ``--watch``, reads it whole again each time it
changed, returning only the jobs with keys it has not returned before.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, final

import attrs

from .._core.checks import check_instance, check_int, check_str
from .._core.errors import GPUPoolError
from .._core.request import Resources
from .._core.units import parse_duration, parse_memory_mb

__all__ = [
    "JobCheck",
    "JobDefaults",
    "JobSpec",
    "JobsFileError",
    "JobsFileReader",
    "LineProblem",
    "NewJobs",
    "parse_duration",
    "parse_jobs",
    "parse_memory_mb",
]

_KEYS = ("gpus", "mem", "shared", "timeout", "retries", "priority", "est", "name")
_YES_NO = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
_ALIASES = {"memory": "mem", "gpu": "gpus", "retry": "retries", "estimate": "est"}
_SPEC_START = re.compile(r"\[(?=[A-Za-z])")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
#: How much of the command a log file name keeps.
_LOG_WORDS = 40


class JobsFileError(GPUPoolError, ValueError):
    """A jobs file could not be read or has bad lines; each problem names file:line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_int(attribute.name, value, minimum=0)


def _optional_timeout(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number of seconds > 0 or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a number of seconds > 0 or None, got {value!r}")


@final
@attrs.frozen
class JobDefaults:
    """What a line gets for each resource it does not name (from the CLI options)."""

    gpus: int = attrs.field(default=1, validator=_non_negative)
    memory_mb: int = attrs.field(default=0, validator=_non_negative)
    timeout: float | None = attrs.field(default=None, validator=_optional_timeout)
    retries: int = attrs.field(default=0, validator=_non_negative)


@final
@attrs.frozen
class JobSpec:
    """One job of a jobs file."""

    key: str
    command: str
    #: Where it came from, for messages: 1-based line number.
    line: int
    #: What it asks of the GPUs: ``gpus=``, ``mem=``, ``priority=`` and ``est=``.
    resources: Resources = attrs.Factory(Resources)
    timeout: float | None = None
    retries: int = 0
    name: str | None = None

    @property
    def gpus(self) -> int:
        return self.resources.required_gpus

    @property
    def memory_mb(self) -> int:
        """Memory each of its GPUs must have free, in MB (MiB); 0 for "any"."""
        return self.resources.min_memory_mb

    @property
    def priority(self) -> int:
        return self.resources.priority

    @property
    def label(self) -> str:
        """Short text for progress displays: the name, or the command cut to 60 chars."""
        if self.name is not None:
            return self.name
        return self.command if len(self.command) <= 60 else self.command[:57] + "..."

    @property
    def log_name(self) -> str:
        """The file name of the job's log: one per key, readable, stable when lines move.

        A named job logs to ``NAME.log``; any other to the first words of its
        command and the digest of its key: ``python train.py --lr 0.1`` (key
        ``job-f13e18dfdfd56d3f``) to ``python-train.py-lr-0.1_f13e18dfdfd56d3f.log``,
        its second copy to ``..._f13e18dfdfd56d3f~2.log``. Names cannot contain
        ``_``, so the two forms never meet, and since the name follows the
        key, not the line number, every attempt of a job in every run appends
        to the same log, wherever its line has moved.
        """
        if self.name is not None:
            return f"{self.name}.log"
        words = re.sub(r"[^A-Za-z0-9.]+", "-", self.command).strip("-.")
        words = words[:_LOG_WORDS].rstrip("-.") or "job"
        return f"{words}_{self.key.removeprefix('job-')}.log"


def _parse_int(key: str, value: str, *, minimum: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{key} must be an int{bound}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")
    return number


def _parse_spec(spec: str) -> dict[str, Any]:
    """``"gpus=2 mem=8G"`` as ``{"required_gpus": 2, "min_memory_mb": 8192}``: the
    :class:`Resources` keywords, and the job's own (``timeout``, ``retries``,
    ``name``); raises ValueError."""
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for token in spec.replace(",", " ").split():
        key, sep, value = token.partition("=")
        key = _ALIASES.get(key.lower(), key.lower())
        if not sep or not value:
            raise ValueError(f"resource {token!r} must be key=value, for example gpus=2")
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown resource {key!r}{hint}; known: {', '.join(_KEYS)}")
        if key in seen:
            raise ValueError(f"resource {key!r} is given twice")
        seen.add(key)
        if key == "gpus":
            fields["required_gpus"] = _parse_int("gpus", value, minimum=0)
        elif key == "mem":
            fields["min_memory_mb"] = parse_memory_mb(value)
        elif key == "timeout":
            fields["timeout"] = parse_duration(value)
        elif key == "retries":
            fields["retries"] = _parse_int("retries", value, minimum=0)
        elif key == "priority":
            fields["priority"] = _parse_int("priority", value, minimum=None)
        elif key == "est":
            fields["expected_duration"] = parse_duration(value, name="est")
        elif key == "shared":
            if value.lower() not in _YES_NO:
                raise ValueError(f"shared must be yes or no, got {value!r}")
            fields["exclusive"] = not _YES_NO[value.lower()]
        else:
            if _NAME.fullmatch(value) is None:
                raise ValueError(
                    "name must be 1-100 letters, digits or ._:- starting with a letter "
                    f"or digit, got {value!r}"
                )
            fields["name"] = value
    return fields


def _command_key(command: str, occurrence: int) -> str:
    digest = hashlib.sha256(command.encode("utf-8")).hexdigest()[:16]
    return f"job-{digest}" if occurrence == 1 else f"job-{digest}~{occurrence}"


@final
@attrs.frozen
class LineProblem:
    """A line of a jobs file that cannot run: where it is and what is wrong."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@attrs.frozen
class _Line:
    """One non-blank, non-comment line: its job, or what is wrong with it."""

    text: str
    number: int
    job: JobSpec | None
    problem: str | None


def parse_jobs(
    text: str,
    *,
    source: str = "<jobs>",
    defaults: JobDefaults | None = None,
    first_line: int = 1,
) -> list[JobSpec]:
    """The jobs in ``text``; every bad line is reported together in one :class:`JobsFileError`.

    ``source`` names the file in messages; ``first_line`` is the number of the
    first line of ``text``.
    """
    check_str("text", text)
    check_int("first_line", first_line, 1)
    defaults = JobDefaults() if defaults is None else defaults
    check_instance("defaults", defaults, JobDefaults, "a JobDefaults or None")
    lines = _parse_text(text, defaults, first_line)
    problems = [
        str(LineProblem(source, line.number, line.problem)) for line in lines if line.problem
    ]
    if problems:
        raise JobsFileError(problems)
    return [line.job for line in lines if line.job is not None]


def _parse_text(text: str, defaults: JobDefaults, first_line: int) -> list[_Line]:
    """Every job line of ``text``, parsed, with keys given in file order."""
    parsed: list[_Line] = []
    occurrences: Counter[str] = Counter()
    names: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=first_line):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            job = _parse_line(line, number, defaults)
        except ValueError as error:
            parsed.append(_Line(line, number, None, str(error)))
            continue
        if job.name is not None:
            if job.name in names:
                problem = (
                    f"name={job.name} is already used on line {names[job.name]}; "
                    "names must be unique"
                )
                parsed.append(_Line(line, number, None, problem))
                continue
            names[job.name] = number
            job = attrs.evolve(job, key=job.name)
        else:
            occurrences[job.command] += 1
            job = attrs.evolve(job, key=_command_key(job.command, occurrences[job.command]))
        parsed.append(_Line(line, number, job, None))
    return parsed


def _parse_line(line: str, number: int, defaults: JobDefaults) -> JobSpec:
    fields: dict[str, Any] = {}
    command = line
    if _SPEC_START.match(line):
        end = line.find("]")
        if end < 0:
            raise ValueError("resource spec has no closing ']', e.g. [gpus=2 mem=8G] cmd")
        fields = _parse_spec(line[1:end])
        command = line[end + 1 :].strip()
        if not command:
            raise ValueError(f"no command after the resource spec {line[: end + 1]!r}")
    if command.endswith("\\"):
        raise ValueError("a command must fit on one line (no '\\' continuation)")
    if "\0" in command:
        raise ValueError("the command contains a NUL character")
    exclusive = fields.pop("exclusive", True)
    memory = fields.pop("min_memory_mb", defaults.memory_mb)
    if not exclusive and not memory:
        raise ValueError("shared=yes needs mem=SIZE: shared GPUs are divided by memory")
    resources = Resources(
        required_gpus=fields.pop("required_gpus", defaults.gpus),
        min_memory_mb=memory,
        exclusive=exclusive,
        priority=fields.pop("priority", 0),
        expected_duration=fields.pop("expected_duration", None),
    )
    return JobSpec(
        key="",
        command=command,
        line=number,
        resources=resources,
        timeout=fields.pop("timeout", defaults.timeout),
        retries=fields.pop("retries", defaults.retries),
        **fields,
    )


@final
@attrs.frozen
class NewJobs:
    """What one look at a jobs file found: jobs not returned before, and bad lines."""

    jobs: tuple[JobSpec, ...]
    problems: tuple[LineProblem, ...]


#: Why a job could never run here (``"gpus=3 but there are only 2 GPUs"``), or None.
JobCheck = Callable[[JobSpec], str | None]


@attrs.define(eq=False)
class JobsFileReader:
    """Reads a jobs file and, for ``--watch``, each new version of it.

    :meth:`read_new` returns the jobs whose keys it has not returned before.
    Each look that finds the file changed (size, modification time or inode)
    reads and parses the whole file again: an editor may change any part of
    it (a comment inserted at the top, a line fixed in the middle), and a
    reader that resumed at the old byte offset would take the tail of some
    line for a new job. Jobs are told apart by key, which does not depend on
    where a line is, so a whole re-read finds exactly the new ones whatever
    was edited; jobs files are small, and unchanged ones are not read.

    With ``complete_only=True`` a last line without its newline is left for a
    later look, so a line being written is never cut in two. A bad line (and,
    with ``check``, a job that could never run) is reported once, at the
    first look that finds it, and skipped; it is known by its text, so after
    a fix the line is read as a job.
    """

    path: Path
    defaults: JobDefaults = attrs.Factory(JobDefaults)
    _stamp: tuple[int, int, int] | None = None
    _returned: set[str] = attrs.Factory(set)
    #: Bad lines already reported, as (text, how many identical bad lines came before + 1).
    _reported: set[tuple[str, int]] = attrs.Factory(set)

    def read_new(self, *, complete_only: bool = False, check: JobCheck | None = None) -> NewJobs:
        """Jobs of the lines that are new since the last call, and new bad lines.

        ``check`` rejects jobs that could never run (reported as problems).
        Raises :class:`JobsFileError` when the file cannot be read at all
        (missing, a directory, unreadable, not UTF-8).
        """
        source = str(self.path)
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise JobsFileError([f"{source}: no such file"]) from None
        except OSError as error:
            raise JobsFileError([f"{source}: cannot read: {error.strerror}"]) from None
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return NewJobs((), ())
        data = self._read(source)
        if complete_only:
            data = data[: data.rfind(b"\n") + 1]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            bad_line = 1 + data[: error.start].count(b"\n")
            raise JobsFileError([f"{source}:{bad_line}: not UTF-8 text"]) from None
        if text.endswith("\n"):
            text = text[:-1]  # the newline ends the last line; it does not start another
        jobs: list[JobSpec] = []
        problems: list[LineProblem] = []
        bad_copies: Counter[str] = Counter()
        for line in _parse_text(text, self.defaults, 1):
            job, problem = line.job, line.problem
            if job is not None:
                if job.key in self._returned:
                    continue
                problem = None if check is None else check(job)
                if problem is None:
                    jobs.append(job)
                    continue
            assert problem is not None
            bad_copies[line.text] += 1
            identity = (line.text, bad_copies[line.text])
            if identity not in self._reported:
                self._reported.add(identity)
                problems.append(LineProblem(source, line.number, problem))
        self._returned.update(job.key for job in jobs)
        self._stamp = stamp
        return NewJobs(tuple(jobs), tuple(problems))

    def _read(self, source: str) -> bytes:
        try:
            with self.path.open("rb") as handle:
                return handle.read()
        except IsADirectoryError:
            raise JobsFileError([f"{source}: is a directory, not a jobs file"]) from None
        except OSError as error:
            raise JobsFileError([f"{source}: cannot read: {error.strerror}"]) from None
