"""``gpupool demo``: a real ``gpupool run`` of a bundled jobs file on fake GPUs.

Nothing is simulated but the GPUs: the jobs are real processes, each sees
its own ``CUDA_VISIBLE_DEVICES``, the journal and the logs are real files in
a fresh directory (or ``--dir``), which is kept so that the user can look at
it; the last message names the command that runs the demo again in that
directory, to see a resume.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from .._core.checks import check_int
from .args import fake_gpus_arg
from .run import EXIT_USAGE, RunOptions, run_jobs

__all__ = ["add_parser", "run_demo"]

DEMO_JOBS = "demo_jobs.txt"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gpupool demo``; the handler is stored as ``handler``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a small example sweep with `gpupool run` on fake GPUs",
        description=(
            "Copy a bundled example jobs file into a fresh directory and run it with "
            "`gpupool run` on fake GPUs: real processes, real journal, real logs."
        ),
    )
    parser.add_argument(
        "--fake-gpus",
        type=fake_gpus_arg(2),
        default=4,
        metavar="N",
        help="how many fake GPUs (default 4)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="run in DIR (created if missing) instead of a new temporary directory",
    )
    parser.set_defaults(handler=command)
    return parser


def command(args: argparse.Namespace) -> int:
    return run_demo(fake_gpus=args.fake_gpus, directory=args.dir)


def run_demo(*, fake_gpus: int = 4, directory: Path | None = None) -> int:
    """Run the demo; the exit code of the ``gpupool run`` inside it."""
    err = Console(stderr=True, highlight=False)
    try:
        check_int("--fake-gpus", fake_gpus, 2)
    except (TypeError, ValueError) as error:
        err.print(f"gpupool demo: error: {error}", markup=False)
        return EXIT_USAGE
    try:
        if directory is None:
            workdir = Path(tempfile.mkdtemp(prefix="gpupool-demo-"))
        else:
            workdir = directory
            workdir.mkdir(parents=True, exist_ok=True)
        jobs_file = workdir / DEMO_JOBS
        text = (
            importlib.resources.files("gpupool")
            .joinpath("examples")
            .joinpath(DEMO_JOBS)
            .read_text()
        )
        jobs_file.write_text(text)
        # The jobs say `python`; make it this interpreter whatever PATH holds.
        bin_dir = workdir / "bin"
        bin_dir.mkdir(exist_ok=True)
        python = bin_dir / "python"
        if not python.exists():
            python.symlink_to(sys.executable)
    except OSError as error:
        err.print(f"gpupool demo: error: cannot prepare the demo directory: {error}")
        return EXIT_USAGE

    err.print(
        f"gpupool demo: running {jobs_file} on {fake_gpus} fake GPUs\n"
        f"  (the same as: cd {shlex.quote(str(workdir))} && "
        f"gpupool run {DEMO_JOBS} --fake-gpus {fake_gpus})\n"
    )
    code = run_jobs(
        RunOptions(
            jobs_file=jobs_file,
            fake_gpus=fake_gpus,
            grace_period=2.0,
            job_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
            job_cwd=workdir,
        )
    )
    # A second `gpupool demo` without --dir starts afresh in a new directory,
    # so the way to see a resume is to name this one.
    again = f"gpupool demo --dir {shlex.quote(str(workdir))} --fake-gpus {fake_gpus}"
    err.print(
        f"\ngpupool demo: logs in {workdir / (DEMO_JOBS + '.logs')}, journal in "
        f"{workdir / (DEMO_JOBS + '.journal.sqlite')}.\n"
        f"  Run `{again}`: finished jobs are answered from the journal, not run again.",
        markup=False,
        soft_wrap=True,
    )
    return code
