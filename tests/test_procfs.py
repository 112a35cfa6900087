"""gpupool._system.procfs: the one parser of /proc/PID/stat, on real processes and real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpupool._system import procfs
from gpupool._system.procfs import DEAD_STATES, ProcInfo, parse_stat, read_stat

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@linux_only
def test_this_process_reads_as_itself() -> None:
    me = read_stat(os.getpid())
    assert me is not None
    assert (me.pid, me.ppid, me.pgid, me.session) == (
        os.getpid(),
        os.getppid(),
        os.getpgid(0),
        os.getsid(0),
    )
    assert me.alive
    assert me.state in "RS"
    assert me.start_time > 0
    assert me.identity == (me.pid, me.start_time)
    assert procfs.start_time(os.getpid()) == me.start_time
    assert os.getpid() in procfs.list_pids()
    assert procfs.boot_id()
    assert procfs.has_proc()


@linux_only
def test_a_spawned_child_in_a_session_of_its_own() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        info = read_stat(child.pid)
        assert info is not None
        assert (info.pid, info.ppid, info.pgid, info.session) == (
            child.pid,
            os.getpid(),
            child.pid,
            child.pid,
        )
        assert info.alive
        mine = read_stat(os.getpid())
        assert mine is not None
        assert info.start_time >= mine.start_time
        # Popen may return a moment before exec has set up the environment (see below).
        path_entry = f"PATH={os.environ['PATH']}".encode()
        deadline = time.monotonic() + 10
        while path_entry not in (procfs.read_environ(child.pid) or []):
            assert time.monotonic() < deadline, procfs.read_environ(child.pid)
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
    assert read_stat(child.pid) is None  # reaped: gone


@linux_only
def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    info = read_stat(child.pid)
    while info is not None and info.alive and time.monotonic() < deadline:
        time.sleep(0.01)
        info = read_stat(child.pid)
    try:
        assert info is not None, "an unreaped child stays listed"
        assert info.state == "Z"
        assert not info.alive
    finally:
        child.wait()


@linux_only
def test_a_command_name_with_spaces_and_parentheses() -> None:
    name = "a) (b c) d"  # comm keeps 15 bytes
    code = (
        f"import ctypes, time; ctypes.CDLL(None).prctl(15, {name.encode()!r}); "
        "print(1, flush=True); time.sleep(30)"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None
            child.stdout.readline()
            info = read_stat(child.pid)
            assert info is not None
            assert info.comm == name
            assert info.ppid == os.getpid()
            # Fields after the name parse: running on its way to sleep, or asleep.
            assert info.state in ("R", "S")
        finally:
            child.kill()


def test_parse_stat_splits_at_the_last_parenthesis() -> None:
    fields = " ".join(["S", "1", "2", "3"] + ["0"] * 15 + ["777", "0", "0"])
    info = parse_stat(f"42 (x) (y) z) {fields}\n".encode())
    assert info == ProcInfo(
        pid=42, comm="x) (y) z", state="S", ppid=1, pgid=2, session=3, start_time=777
    )


@pytest.mark.parametrize("state", sorted(DEAD_STATES))
def test_every_dead_state_of_proc_5_is_not_alive(state: str) -> None:
    fields = " ".join([state, "1", "2", "3"] + ["0"] * 15 + ["9"])
    info = parse_stat(f"5 (w) {fields}".encode())
    assert info is not None
    assert not info.alive


def test_the_dead_states_are_those_of_proc_5() -> None:
    """Regression: one copy of the parser took "x" (dead, Linux 2.6.33-3.13) for alive."""
    assert sorted(DEAD_STATES) == ["X", "Z", "x"]  # dead, zombie, dead on old kernels


@pytest.mark.parametrize(
    "text", [b"", b"42 (x", b"42 x) S 1 2 3", b"42 (x) S 1 2", b"zz (x) S a b c" + b" 0" * 16]
)
def test_malformed_stat_is_none(text: bytes) -> None:
    assert parse_stat(text) is None


def test_without_proc_everything_is_unknown(tmp_path: Path) -> None:
    missing = tmp_path / "no-proc"
    assert read_stat(1, proc=missing) is None
    assert procfs.start_time(1, proc=missing) is None
    assert procfs.list_pids(proc=missing) == []
    assert procfs.read_environ(1, proc=missing) is None
    assert procfs.boot_id(proc=missing) is None
    assert not procfs.has_proc(proc=missing)


# -- pid namespace, command line and command name ------------------------------------

PID_NAMESPACE = re.compile(r"pid:\[\d+\]")


@linux_only
def test_the_pid_namespace_of_this_process_and_its_child() -> None:
    mine = procfs.pid_namespace()
    assert mine is not None
    assert PID_NAMESPACE.fullmatch(mine)
    assert mine == os.readlink("/proc/self/ns/pid")
    assert procfs.pid_namespace(os.getpid()) == mine
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            assert procfs.pid_namespace(child.pid) == mine
        finally:
            child.kill()


def _unshare_pid() -> list[str] | None:
    """An ``unshare`` command line that starts a process in a new PID namespace, if allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    command = [unshare, "--pid", "--fork"]
    if os.geteuid() != 0:
        command.insert(1, "--user")
        command.insert(2, "--map-root-user")
    probe = subprocess.run([*command, "true"], capture_output=True, check=False)
    return command if probe.returncode == 0 else None


def _settles(read: Callable[[], str | None], expected: str, *, timeout: float = 10.0) -> bool:
    """Whether ``read()`` returns ``expected`` within ``timeout`` seconds (on failure, shows it)."""
    deadline = time.monotonic() + timeout
    while (seen := read()) != expected:
        assert time.monotonic() < deadline, f"still {seen!r}, expected {expected!r}"
        time.sleep(0.01)
    return True


def _child_of(parent: int, *, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in procfs.list_pids():
            info = read_stat(pid)
            if info is not None and info.ppid == parent and info.alive:
                return pid
        time.sleep(0.01)
    raise AssertionError(f"process {parent} started no child within {timeout} s")


@linux_only
def test_a_process_in_another_pid_namespace_reads_as_such() -> None:
    command = _unshare_pid()
    if command is None:
        pytest.skip("cannot create a PID namespace here (unshare, or user namespaces, missing)")
    with subprocess.Popen([*command, "sleep", "30"]) as unshare:
        try:
            inner = _child_of(unshare.pid)  # pid 1 of the new namespace, seen from here
            theirs = procfs.pid_namespace(inner)
            assert theirs is not None
            assert PID_NAMESPACE.fullmatch(theirs)
            assert theirs != procfs.pid_namespace()
            assert procfs.pid_namespace(unshare.pid) == procfs.pid_namespace()  # unshare stays here
            # Forked by unshare, it may not have run exec yet: wait until it has.
            assert _settles(lambda: procfs.cmdline(inner), "sleep 30")
            assert procfs.comm(inner) == "sleep"
        finally:
            unshare.kill()


@linux_only
def test_command_line_and_name_of_a_child() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "an argument"]
    with subprocess.Popen(argv) as child:
        try:
            # Popen returns once exec has closed the child's descriptors, a moment
            # before the kernel has set up the new arguments: wait for those.
            assert _settles(lambda: procfs.cmdline(child.pid), " ".join(argv))
            assert procfs.comm(child.pid) == Path(sys.executable).name[:15]  # exec's file name
        finally:
            child.kill()


@linux_only
def test_comm_is_the_name_stat_shows_even_when_renamed() -> None:
    name = "gpupool) (x y"
    code = (
        f"import ctypes, time; ctypes.CDLL(None).prctl(15, {name.encode()!r}); "
        "print(1, flush=True); time.sleep(30)"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None
            child.stdout.readline()
            assert procfs.comm(child.pid) == name
            info = read_stat(child.pid)
            assert info is not None
            assert info.comm == name
        finally:
            child.kill()
    me = read_stat(os.getpid())
    assert me is not None
    assert procfs.comm("self") == me.comm


@linux_only
def test_a_zombie_has_an_empty_command_line_but_a_name() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    info = read_stat(child.pid)
    while info is not None and info.alive and time.monotonic() < deadline:
        time.sleep(0.01)
        info = read_stat(child.pid)
    try:
        assert info is not None
        assert not info.alive
        assert procfs.cmdline(child.pid) == ""
        assert procfs.comm(child.pid) == "true"
    finally:
        child.wait()


@linux_only
def test_a_process_that_is_gone_reads_as_none() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert procfs.pid_namespace(child.pid) is None
    assert procfs.cmdline(child.pid) is None
    assert procfs.comm(child.pid) is None


def test_without_proc_the_new_readers_are_unknown(tmp_path: Path) -> None:
    missing = tmp_path / "no-proc"
    assert procfs.pid_namespace(proc=missing) is None
    assert procfs.pid_namespace(1, proc=missing) is None
    assert procfs.cmdline(1, proc=missing) is None
    assert procfs.comm("self", proc=missing) is None


ANOTHER_USER = """
import json, os, sys
from gpupool._system import procfs
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # after the import, which may live where nobody cannot read
parent = int(sys.argv[1])
print(json.dumps([procfs.pid_namespace(parent), procfs.pid_namespace(), procfs.comm(parent)]))
"""


@linux_only
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid needs root (setuid)")
def test_another_users_pid_namespace_cannot_be_read() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ANOTHER_USER, str(os.getpid())],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs, own, name = json.loads(done.stdout)
    assert theirs is None  # ptrace access is needed: root's process, read by nobody
    assert own == procfs.pid_namespace()  # its own it can read: the same namespace
    assert name == procfs.comm("self")  # the name is public
