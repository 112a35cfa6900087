"""Processes that join a ledger, for the tests of the machine-wide view and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from gpupool._system.procfs import read_stat

REPO = Path(__file__).resolve().parents[1]
MEMBER_SCRIPT = Path(__file__).with_name("scripts") / "ledger_member.py"


def env() -> dict[str, str]:
    """This environment, with the repository importable and no GPU mask or ledger setting."""
    result = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "GPUPOOL_"))}
    result["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), result.get("PYTHONPATH")]))
    return result


@attrs.define(eq=False)
class Member:
    """A ``ledger_member.py`` process."""

    process: subprocess.Popen[str]
    info: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self, timeout: float = 30) -> dict[str, Any]:
        """Its JSON line: it holds its GPUs (and its job runs)."""
        if self.info is None:
            stdout = self.process.stdout
            assert stdout is not None
            readable, _, _ = select.select([stdout], [], [], timeout)
            assert readable, "the member did not get its GPUs in time"
            line = stdout.readline()
            assert line, f"the member exited with {self.process.wait()}"
            self.info = json.loads(line)
        return self.info

    def close(self) -> int:
        """Close its stdin: it releases and exits."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            stdin.close()
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@contextlib.contextmanager
def members() -> Iterator[Callable[..., Member]]:
    """Start members with ``start(ledger, *options)``; all are ended afterwards."""
    started: list[Member] = []

    def start(ledger: Path, *options: str) -> Member:
        process = subprocess.Popen(
            [sys.executable, str(MEMBER_SCRIPT), str(ledger), *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=REPO,
        )
        member = Member(process)
        started.append(member)
        return member

    try:
        yield start
    finally:
        for member in started:
            job = None if member.info is None else member.info.get("job")
            if member.process.poll() is None:
                member.process.kill()
            member.process.wait(timeout=30)
            for pipe in (member.process.stdin, member.process.stdout):
                if pipe is not None:
                    pipe.close()
            if job is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job, signal.SIGKILL)


def session_members(session: int, *, exclude: Sequence[int] = ()) -> list[int]:
    """The pids of the processes in ``session`` (from /proc), but ``exclude``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        info = read_stat(int(name))
        if info is not None and info.session == session and info.alive:
            found.append(info.pid)
    return found
