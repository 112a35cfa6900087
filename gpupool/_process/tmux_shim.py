"""The wrapper that runs a job inside a tmux window for ``gpupool run --tmux``.

tmux starts this file (``python -I tmux_shim.py SOCKET``) as the window's
process; it is the job's parent there, and the ``gpupool run`` that made the
window stays the job's owner through a Unix socket. Design, and why:

* **The job is started exactly as in direct mode**: a session of its own
  (``setsid``: its pid is its process group and session id), stdin
  ``/dev/null``, stdout and stderr interleaved into one pipe, the environment
  that ``run_process`` computed (sent over the socket, never put on a command
  line or in this process's own environment: this process carries no job
  token, so ``proctree`` never mistakes it for a process of the job). A job
  therefore behaves the same in both modes (no terminal, same buffering).
* **Output is teed**: every chunk goes to the log file (appended) and to the
  window, so a person attached sees it live and the log is what direct mode
  writes. The window is a view the job never waits for: it is written
  without blocking, from a backlog of at most 1 MiB (a window stopped with
  Ctrl-S loses the oldest of it; the log loses nothing).
* **Signal dispositions are a direct child's**: tmux leaves some signals
  ignored in a window's process, and a job inherits ignored signals across
  exec; the job is started with every signal at its default but those that
  ``gpupool run`` itself ignores (sent in the spec).
* **The leader stays unreaped until gpupool says so**: its exit is seen with
  ``waitid(WNOWAIT)``, reported, and the leader is reaped only after gpupool
  has ended the rest of the job and sent ``finish``. Until then its pid
  cannot be recycled, so gpupool may signal the group, as ``run_process``
  may while its own child is unreaped.
* **A closed window is reported, not fatal**: SIGHUP (the window was killed,
  or the tmux server) is ignored and reported as ``hangup``; gpupool then
  ends the job (SIGTERM, grace, SIGKILL) and fails it with a clear message.
  Ctrl-C typed in the window is forwarded to the job's process group, as a
  terminal would deliver it to a foreground job.
* **gpupool gone** (``kill -9``): the job runs on, as in direct mode, and is
  ended by the next ``gpupool run``, which kills the recorded group; this
  wrapper then sees the leader exit and ends.

Protocol, one JSON object per line. gpupool sends the spec first (``args``,
``env``, ``cwd``, ``log``, ``keep_failed_s``, ``ignored``); the wrapper answers
``{"started": PID}`` (or ``{"error": ERRNO, "message": ...}``), then
``{"exited": RETURNCODE}`` and ``{"hangup": true}`` as they happen; gpupool
sends ``{"finish": true}`` once the job is over, and the wrapper drains the
output, answers ``{"flushed": true}``, reaps the leader and exits (after a
failure it first keeps the window open ``keep_failed_s`` seconds).

Standard library only, run with ``-I``: the window's environment is the tmux
server's, which need not be able to import gpupool.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

#: How long the output may take to drain once the job is over.
_DRAIN_S = 1.0
#: At most this much output waits for a window that is slow to take it (or stopped).
_BACKLOG = 1 << 20
#: How often the leader's exit is looked for.
_POLL_S = 0.05


class _Wrapper:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.incoming = b""
        self.connected = True
        self.terminal = True
        self.hung_up = False
        self.reported_hangup = False
        #: How long a failed job's window stays open (from the spec).
        self.keep_failed_s = 0.0
        #: Output the window has not taken yet.
        self.backlog = b""
        #: The job's leader while it runs (for a Ctrl-C typed in the window).
        self.job_pid: int | None = None

    def hangup(self, signum: int, frame: object) -> None:
        """SIGHUP: the window is gone. Reported by the loop; the job is gpupool's to end."""
        self.hung_up = True
        self.terminal = False

    def interrupt(self, signum: int, frame: object) -> None:
        """SIGINT (Ctrl-C typed in the window): the job's process group gets it."""
        if self.job_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.job_pid, signal.SIGINT)

    def send(self, message: dict[str, Any]) -> None:
        if not self.connected:
            return
        try:
            self.control.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self.connected = False

    def receive(self) -> list[dict[str, Any]]:
        """The messages that arrived (call when the socket is readable)."""
        try:
            data = self.control.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.connected = False
            return []
        self.incoming += data
        *lines, self.incoming = self.incoming.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def show(self, data: bytes) -> None:
        """Queue ``data`` for the window; the oldest is dropped past :data:`_BACKLOG`."""
        if self.terminal:
            self.backlog = (self.backlog + data)[-_BACKLOG:]
            self.flush_terminal()

    def flush_terminal(self) -> None:
        """Write what the window can take now, never waiting for it.

        The window is a view: the job must never wait for it (a person who types
        Ctrl-S in the window stops the terminal's output, which would otherwise
        stop this loop, then the log, then the job, blocked on a full pipe).
        """
        if not self.terminal or not self.backlog:
            return
        try:
            written = os.write(sys.stdout.fileno(), self.backlog)
        except BlockingIOError:
            return
        except OSError:  # the window is gone (EIO): the log still gets everything
            self.terminal = False
            self.backlog = b""
            return
        self.backlog = self.backlog[written:]


def _dispositions(ignored: frozenset[int]) -> None:
    """In the job, before exec: the signal dispositions it would get as gpupool's child.

    A job inherits ignored signals across exec. tmux leaves SIGTTIN and
    SIGTTOU ignored in a window's process, and gpupool's may differ (``nohup``);
    so every signal is reset, then those ``gpupool run`` ignores (``ignored``)
    are ignored, as they would be in direct mode.
    """
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)


def _returncode(status: os.waitid_result) -> int:
    if status.si_code == os.CLD_EXITED:
        return status.si_status
    return -status.si_status


def _serve(wrapper: _Wrapper) -> int:
    spec: dict[str, Any] | None = None
    while spec is None and wrapper.connected:
        messages = wrapper.receive()
        spec = messages[0] if messages else None
    if spec is None:
        return 1
    args = spec["args"]
    wrapper.keep_failed_s = float(spec.get("keep_failed_s", 0.0))
    log = None if spec["log"] is None else os.open(spec["log"], os.O_WRONLY | os.O_APPEND)
    try:
        job = subprocess.Popen(
            ["/bin/sh", "-c", args] if isinstance(args, str) else args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=spec["cwd"],
            env=spec["env"],
            start_new_session=True,
            preexec_fn=functools.partial(_dispositions, frozenset(spec.get("ignored", ()))),
        )
    except OSError as error:
        wrapper.send({"error": error.errno or 0, "message": str(error)})
        return 1
    assert job.stdout is not None
    output = job.stdout.fileno()
    os.set_blocking(output, False)

    returncode: int | None = None
    wrapper.job_pid = job.pid
    wrapper.send({"started": job.pid})
    finished = False
    output_open = True
    drain_until: float | None = None
    while True:
        if wrapper.hung_up and not wrapper.reported_hangup:
            wrapper.reported_hangup = True
            wrapper.send({"hangup": True})
        if returncode is None:
            status = os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if status is not None:
                returncode = _returncode(status)
                wrapper.job_pid = None  # exited: its group is no longer ours to signal
                wrapper.send({"exited": returncode})
                if not wrapper.connected:
                    drain_until = time.monotonic() + _DRAIN_S
        if (finished or not wrapper.connected) and returncode is not None and drain_until is None:
            drain_until = time.monotonic() + _DRAIN_S
        if drain_until is not None and (not output_open or time.monotonic() >= drain_until):
            break
        readable = [output] if output_open else []
        if wrapper.connected:
            readable.append(wrapper.control.fileno())
        try:
            waiting = [sys.stdout.fileno()] if wrapper.terminal and wrapper.backlog else []
            ready, writable, _ = select.select(readable, waiting, [], _POLL_S)
        except InterruptedError:  # pragma: no cover - Python retries select itself
            continue
        if writable:
            wrapper.flush_terminal()
        if output in ready:
            try:
                chunk = os.read(output, 65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                output_open = False
            elif chunk:
                if log is not None:
                    os.write(log, chunk)
                wrapper.show(chunk)
        if wrapper.connected and wrapper.control.fileno() in ready:
            for message in wrapper.receive():
                finished = finished or bool(message.get("finish"))
    if log is not None:
        os.close(log)  # written with os.write: nothing is buffered here
    wrapper.send({"flushed": True})
    job.wait()  # the leader may be reaped now: gpupool has ended the rest of the job
    assert returncode is not None
    return returncode


def _linger(wrapper: _Wrapper, returncode: int, seconds: float) -> None:
    """Keep a failed job's window open a while, so that a person can read its end;
    not past the window itself (closed by a person, or the tmux server killed)."""
    if seconds <= 0:
        return
    how = f"exit code {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    try:
        print(
            f"\n[gpupool] the job ended ({how}); this window closes in {seconds:g}s "
            "(Ctrl-b d detaches)",
            flush=True,
        )
    except OSError:
        return
    deadline = time.monotonic() + seconds
    while not wrapper.hung_up and time.monotonic() < deadline:
        time.sleep(min(_POLL_S * 4, max(0.0, deadline - time.monotonic())))


def main(argv: list[str]) -> int:
    """``python -I tmux_shim.py SOCKET``: run the job gpupool sends over ``SOCKET``."""
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wrapper = _Wrapper(control)
    os.set_blocking(sys.stdout.fileno(), False)
    # Handlers, not SIG_IGN: an ignored signal stays ignored in the job across
    # exec, a handled one is reset to its default there, as in direct mode.
    signal.signal(signal.SIGHUP, wrapper.hangup)
    signal.signal(signal.SIGINT, wrapper.interrupt)
    control.connect(argv[0])
    try:
        returncode = _serve(wrapper)
    finally:
        control.close()
    if returncode != 0 and wrapper.terminal and wrapper.keep_failed_s > 0:
        # The window stays for a person to read: the end of the output first.
        os.set_blocking(sys.stdout.fileno(), True)
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), wrapper.backlog)
        _linger(wrapper, returncode, wrapper.keep_failed_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
