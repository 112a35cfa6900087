"""``gpupool attach JOB``: look in on a job that ``gpupool run --tmux`` is running.

The job is found as ``gpupool._cli.job_lookup`` says; its window is read
from the state file ``gpupool run --tmux`` keeps beside the job's log while
the job runs (``LOG.tmux``: the tmux server's socket, the session and the
window id), so the journal's schema is untouched. Then this process becomes
``tmux attach-session`` on that window (``exec``), or, inside a tmux client
of the same server, ``tmux switch-client`` to it. ``--read-only`` attaches
with ``-r``: keys typed do not reach the window (Ctrl-C there interrupts the
job). Detach as usual, ``Ctrl-b d``; the job goes on.

A job that is not running, runs without ``--tmux``, or whose window is gone
gets one line saying so and exit code 1 (``gpupool logs JOB`` shows its
output either way); no such job or journal, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from .._process.tmux import TmuxError, WindowState, tmux_command
from .job_lookup import FoundJob, add_job_arguments, job_of_arguments

__all__ = ["add_parser", "command", "window_of"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "attach",
        help="attach to the tmux window of a job of gpupool run --tmux",
        description=(
            "Attach this terminal to the tmux window where JOB runs (gpupool run --tmux). "
            "JOB is a key or name, a line number of the jobs file, or a key prefix. "
            "Detach with Ctrl-b d; the job goes on."
        ),
        epilog="exit codes: 1 the job is not running in a tmux window, 2 no such journal or job",
    )
    add_job_arguments(parser)
    parser.add_argument(
        "-r",
        "--read-only",
        action="store_true",
        help="attach read-only: what you type does not reach the window",
    )
    parser.set_defaults(handler=command)
    return parser


class NotAttachable(Exception):
    """The job has no window to attach to; the message says why and what to do."""


def window_of(job: FoundJob) -> WindowState:
    """The tmux window ``job`` runs in; :class:`NotAttachable` saying why there is none."""
    logs_hint = f"`gpupool logs {job.key}` shows its output"
    if not job.running:
        state = job.status.value.replace("_", " ")
        why = f"it {state}" if job.status.is_final else f"it is {state} but its run has gone"
        raise NotAttachable(f"job {job.key} is not running ({why}); {logs_hint}")
    state_path = None if job.log is None else job.log.with_name(job.log.name + ".tmux")
    if state_path is None or not state_path.exists():
        raise NotAttachable(
            f"job {job.key} is not running in a tmux window (its run was started without "
            f"--tmux, or it has not started yet); `gpupool logs {job.key} --follow` follows "
            "its output"
        )
    try:
        window = WindowState.load(state_path.read_text())
    except (OSError, ValueError) as error:
        raise NotAttachable(f"cannot read {state_path}: {error}") from None
    shown = subprocess.run(
        [
            tmux_command(),
            "-S",
            window.socket,
            "display-message",
            "-p",
            "-t",
            window.target(),
            "#{window_id}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0 or shown.stdout.strip() != window.window_id:
        raise NotAttachable(
            f"the tmux window of job {job.key} ({window.session}:{window.window_name}) is gone; "
            f"{logs_hint}"
        )
    return window


def command(args: argparse.Namespace) -> int:
    job = job_of_arguments(args, "attach")
    if job is None:
        return 2
    try:
        window = window_of(job)
    except (NotAttachable, TmuxError) as error:
        print(f"gpupool attach: {error}", file=sys.stderr)
        return 1
    tmux = tmux_command()
    env = dict(os.environ)
    inside = env.get("TMUX", "").split(",")[0]
    if inside and os.path.realpath(inside) == os.path.realpath(window.socket):
        # (switch-client -r would toggle the client's read-only mode, not set it.)
        argv = [tmux, "-S", window.socket, "switch-client", "-t", window.target()]
    else:
        if not os.isatty(sys.stdin.fileno()):
            print("gpupool attach: attaching needs a terminal (stdin is not one)", file=sys.stderr)
            return 1
        env.pop("TMUX", None)  # inside another tmux server: nest, as `TMUX= tmux attach` does
        argv = [tmux, "-S", window.socket, "attach-session", "-t", window.target()]
        if args.read_only:
            argv.append("-r")
    sys.stdout.flush()
    os.execve(tmux, argv, env)
    raise AssertionError("unreachable")  # pragma: no cover
