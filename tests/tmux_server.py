"""A private tmux server for the tests: never the user's, always killed afterwards.

tmux puts its socket in ``$TMUX_TMPDIR/tmux-UID/default`` and talks to the
server of ``$TMUX`` when that is set; the fixture points ``TMUX_TMPDIR`` at a
fresh short directory (a socket path has at most 107 bytes) and drops
``TMUX``, in this process (for in-process runs) and in :meth:`TmuxServer.env`
(for the ``gpupool`` processes a test starts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

__all__ = ["TmuxServer", "tmux_server"]


@attrs.frozen
class TmuxServer:
    tmpdir: Path

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.pop("TMUX", None)
        env["TMUX_TMPDIR"] = str(self.tmpdir)
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", *args], env=self.env(), capture_output=True, text=True, check=False
        )

    def windows(self) -> list[tuple[str, str]]:
        """Every window of the server: (session name, window name)."""
        listed = self.run("list-windows", "-a", "-F", "#{session_name}\t#{window_name}")
        if listed.returncode != 0:
            return []
        return [tuple(line.split("\t", 1)) for line in listed.stdout.splitlines()]  # type: ignore[misc]

    def pane_text(self, target: str) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", target).stdout

    def clients(self) -> list[str]:
        """The sessions and windows clients are attached to: ``SESSION:WINDOW`` each."""
        listed = self.run("list-clients", "-F", "#{client_session}:#{window_name}")
        return listed.stdout.split() if listed.returncode == 0 else []


@pytest.fixture
def tmux_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[TmuxServer]:
    if shutil.which("tmux") is None:
        pytest.fail("these tests need tmux on PATH (Debian/Ubuntu: apt-get install tmux)")
    tmpdir = Path(tempfile.mkdtemp(prefix="gpt-", dir="/tmp"))
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.setenv("TMUX_TMPDIR", str(tmpdir))
    server = TmuxServer(tmpdir)
    try:
        yield server
    finally:
        server.run("kill-server")
        shutil.rmtree(tmpdir, ignore_errors=True)
