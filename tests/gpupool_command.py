"""The ``gpupool`` command as a real process, for the command line's end-to-end tests.

Each test runs ``python -m gpupool`` from a directory of its own, with this
repository importable and stdin ``/dev/null``; ``COLUMNS`` is dropped, so that
what the command prints is not wrapped to the width of the terminal the tests
run in.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import AnyStr

__all__ = [
    "REPO",
    "command_env",
    "finish",
    "held_reservation",
    "killed_on_exit",
    "run_gpupool",
    "start_gpupool",
    "started_gpupool",
]

REPO = Path(__file__).resolve().parents[1]


def command_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (by default this process's environment), with the repository first on
    ``PYTHONPATH`` and no ``COLUMNS``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("COLUMNS", None)
    return env


def run_gpupool(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``gpupool ARGS`` to its end, its output captured (``env``: :func:`command_env`'s)."""
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        cwd=cwd,
        env=command_env() if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_gpupool(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``gpupool ARGS`` started, stdout and stderr piped (see :func:`finish`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gpupool", *args],
        cwd=cwd,
        env=command_env() if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """Wait for ``process`` to end; its stdout and stderr. Killed if it does not end."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@contextlib.contextmanager
def killed_on_exit(process: subprocess.Popen[AnyStr]) -> Iterator[subprocess.Popen[AnyStr]]:
    """``process``, killed and reaped on the way out if it still runs (a failed assertion
    must not leave it behind)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def started_gpupool(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """:func:`start_gpupool`, killed on the way out if it still runs."""
    return killed_on_exit(start_gpupool(*args, cwd=cwd, env=env))


@contextlib.contextmanager
def held_reservation(*options: str, cwd: Path | None = None) -> Iterator[int]:
    """``gpupool reserve OPTIONS`` (no command) holding its GPUs until the block ends
    (SIGTERM then); yields the hold's id once it holds them."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "gpupool", "reserve", *options],
        cwd=cwd,
        env=command_env(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout is not None
        first = holder.stdout.readline()  # "# gpupool reservation ID: ..." once it holds
        assert first.startswith("# gpupool reservation "), first
        yield int(first.split()[3].rstrip(":"))
    finally:
        holder.terminate()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
