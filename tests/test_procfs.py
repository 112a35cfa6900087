"""gpupool._system.procfs: the one parser of /proc/PID/stat, on real processes and real files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
        assert f"PATH={os.environ['PATH']}".encode() in (procfs.read_environ(child.pid) or [])
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
