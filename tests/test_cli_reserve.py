"""``gpupool reserve`` and ``gpupool release``: real CLI processes over fake GPUs shared
through a ledger, real signals."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpupool import FakeGPUProvider, LedgerHolder, MachineStatus, machine_status
from gpupool._cli import release as release_module
from gpupool._cli.release import refusal_of
from gpupool._ledger.rows import HoldRow, MemberRow
from gpupool._ledger.store import LedgerStore
from gpupool.providers.fake import fake_uuid

from .ledger_helpers import REPO, Member, env, members
from .waiting import gone, wait_for

FAKE_UUIDS = {fake_uuid(0), fake_uuid(1)}


@pytest.fixture
def start() -> Iterator[Callable[..., Member]]:
    with members() as start:
        yield start


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger"


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def _reserve(
    spawned: list[subprocess.Popen[str]], ledger: Path, *args: str, cwd: Path | None = None
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpupool", "reserve", "--fake-gpus", "2", "--ledger", str(ledger),
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env(), cwd=cwd or REPO,
    )  # fmt: skip
    spawned.append(process)
    return process


def _status(ledger: Path) -> MachineStatus:
    return machine_status(ledger, provider=FakeGPUProvider(2))


def _reservation(ledger: Path) -> LedgerHolder | None:
    if not ledger.is_dir():
        return None
    found = [h for h in _status(ledger).holders if h.kind == "reservation"]
    return found[0] if found else None


def _registered(ledger: Path) -> LedgerHolder | None:
    """The reservation, once its command is registered as its job."""
    holder = _reservation(ledger)
    return holder if holder is not None and holder.job_pids else None


def _lines(process: subprocess.Popen[str], count: int, timeout: float = 30) -> list[str]:
    """The first ``count`` lines of ``process``'s stdout (read from the descriptor: the
    text wrapper's buffer would hide what it read ahead from ``select``)."""
    stdout = process.stdout
    assert stdout is not None
    fd = stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert readable, f"only {data!r} after {timeout} s"
        chunk = os.read(fd, 65536)
        assert chunk, f"stdout ended after {data!r}"
        data += chunk
    return data.decode().splitlines()[:count]


# -- with a command ------------------------------------------------------------------


def test_the_command_runs_on_its_gpus_held_as_a_reservation_until_it_exits(
    ledger: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    script = (
        'echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $GPUPOOL_RESERVATION" > seen; '
        "while [ ! -e stop ]; do sleep 0.05; done; exit 7"
    )
    process = _reserve(spawned, ledger, "--gpus", "1", "--", "sh", "-c", script, cwd=tmp_path)
    holder = wait_for(lambda: _registered(ledger), "the reservation and its job")
    seen = wait_for(lambda: (tmp_path / "seen").exists() and (tmp_path / "seen").read_text(), "")
    visible, order, hold_id = seen.split()
    assert (visible,) == holder.gpu_uuids
    assert visible in FAKE_UUIDS
    assert order == "PCI_BUS_ID"
    assert int(hold_id) == holder.id
    assert holder.pid == process.pid
    assert holder.exclusive
    assert holder.until is None
    assert len(holder.job_pids) == 1  # the command, registered as the reservation's job
    (tmp_path / "stop").touch()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 7  # the command's own exit code
    assert f"reservation {holder.id}: GPU " in err
    assert _status(ledger).holders == ()


def test_the_command_reads_stdin_and_writes_stdout_of_the_terminal(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpupool", "reserve", "--fake-gpus", "2", "--ledger", str(ledger),
         "--gpus", "2", "--", "sh", "-c", 'read line; echo "got $line on $CUDA_VISIBLE_DEVICES"'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(),
    )  # fmt: skip
    spawned.append(process)
    out, _ = process.communicate("hello\n", timeout=60)
    assert process.returncode == 0
    assert out == f"got hello on {fake_uuid(0)},{fake_uuid(1)}\n"


def test_for_ends_the_command_with_sigterm_and_then_the_reservation(
    ledger: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    script = 'trap "echo TERM > got; exit 0" TERM; touch started; while :; do sleep 0.05; done'
    process = _reserve(
        spawned, ledger, "--gpus", "1", "--for", "1s", "--", "sh", "-c", script, cwd=tmp_path
    )
    _, err = process.communicate(timeout=60)
    assert (tmp_path / "started").exists()
    assert (tmp_path / "got").read_text() == "TERM\n"
    assert process.returncode == 0
    assert "ended (its time is up)" in err
    assert _status(ledger).holders == ()


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    ledger: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    script = 'trap "" TERM; touch started; while :; do sleep 0.05; done'
    process = _reserve(
        spawned, ledger, "--gpus", "1", "--for", "1s", "--grace", "0.5", "--", "sh", "-c", script,
        cwd=tmp_path,
    )  # fmt: skip
    process.communicate(timeout=60)
    assert (tmp_path / "started").exists()
    assert process.returncode == 0
    holders = _status(ledger).holders
    assert holders == ()


def test_ctrl_c_goes_to_the_command_and_the_reservation_lasts_as_long_as_it(
    ledger: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    script = 'trap "echo INT > got; exit 3" INT; touch started; while :; do sleep 0.05; done'
    process = _reserve(spawned, ledger, "--gpus", "1", "--", "sh", "-c", script, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "started").exists(), "the command to start")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert (tmp_path / "got").read_text() == "INT\n"
    assert process.returncode == 3


def test_a_missing_command_is_exit_127_and_nothing_stays_held(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1", "--", "no-such-command-here")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 127
    assert "command not found" in err
    assert _status(ledger).holders == ()


# -- without a command ---------------------------------------------------------------


def test_without_a_command_it_prints_the_environment_holds_and_release_ends_it(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "2", "--for", "1h")
    head, end, *exports = _lines(process, 4)
    holder = _reservation(ledger)
    assert holder is not None
    assert holder.pid == process.pid
    assert head.startswith(f"# gpupool reservation {holder.id}: GPUs 0 (")
    assert f"gpupool release {holder.id} --ledger {ledger}" in end
    assert exports == [
        "export CUDA_DEVICE_ORDER=PCI_BUS_ID",
        f"export CUDA_VISIBLE_DEVICES={fake_uuid(0)},{fake_uuid(1)}",
    ]
    assert holder.until is not None
    assert 3500 < holder.until - time.time() <= 3600
    done = _cli("release", str(holder.id), "--ledger", str(ledger))
    assert done.returncode == 0, done.stderr
    assert f"reservation {holder.id} released" in done.stderr
    assert _status(ledger).holders == ()  # gone before release returned
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "ended (released)" in err


def test_without_a_command_for_ends_the_hold(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1", "--for", "1s")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "export CUDA_VISIBLE_DEVICES=" in out
    assert "ended (its time is up)" in err
    assert _status(ledger).holders == ()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_without_a_command_a_signal_ends_the_hold(
    signum: int, ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1")
    _lines(process, 2)
    assert _reservation(ledger) is not None
    process.send_signal(signum)
    process.communicate(timeout=60)
    assert process.returncode == 0
    assert _status(ledger).holders == ()


# -- waiting in the machine-wide queue -----------------------------------------------


def test_timeout_while_every_gpu_is_held_is_exit_1_with_a_clear_message(
    ledger: Path, start: Callable[..., Member], spawned: list[subprocess.Popen[str]]
) -> None:
    start(ledger, "--gpus", "2").ready()
    process = _reserve(spawned, ledger, "--gpus", "1", "--timeout", "1s", "--", "true")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "waiting for 1 GPU in the machine-wide queue" in err
    assert "1 GPU not granted within 1s" in err
    assert "nothing was reserved" in err
    assert [h.kind for h in _status(ledger).holders] == ["allocation"]


def test_a_reservation_granted_by_another_process_is_still_a_reservation(
    ledger: Path, start: Callable[..., Member], spawned: list[subprocess.Popen[str]]
) -> None:
    holder = start(ledger, "--gpus", "2")
    holder.ready()
    process = _reserve(spawned, ledger, "--gpus", "2")
    wait_for(lambda: _status(ledger).waiters, "the reservation to queue")
    holder.close()  # its release grants the reservation, in the holder's process
    _lines(process, 2)
    reservation = wait_for(lambda: _reservation(ledger), "the reservation")
    assert reservation.pid == process.pid
    assert len(reservation.gpu_uuids) == 2
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 0


def test_a_signal_while_waiting_is_exit_130_and_leaves_no_waiter(
    ledger: Path, start: Callable[..., Member], spawned: list[subprocess.Popen[str]]
) -> None:
    start(ledger, "--gpus", "2").ready()
    process = _reserve(spawned, ledger, "--gpus", "1")
    wait_for(lambda: _status(ledger).waiters, "the reservation to queue")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "nothing was reserved" in err
    assert _status(ledger).waiters == ()


def test_shared_reservations_share_a_gpu(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    first = _reserve(spawned, ledger, "--gpus", "1", "--mem", "8G", "--shared")
    second = _reserve(spawned, ledger, "--gpus", "1", "--mem", "8G", "--shared")
    _lines(first, 2)
    _lines(second, 2)
    holders = _status(ledger).holders
    assert len(holders) == 2
    assert all(not h.exclusive and h.memory_mb == 8192 for h in holders)
    for process in (first, second):
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_mem_alone_still_holds_the_gpu_whole(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1", "--mem", "8G")
    _lines(process, 2)
    holder = _reservation(ledger)
    assert holder is not None
    assert holder.exclusive
    assert holder.memory_mb == 8192
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)


# -- usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fake-gpus", "2", "--gpus", "1"], "--fake-gpus needs --ledger PATH"),
        (["--fake-gpus", "2", "--ledger", "L", "--gpus", "1", "--shared"], "--shared needs --mem"),
        (["--fake-gpus", "2", "--ledger", "L"], "--gpus"),
        (["--fake-gpus", "2", "--ledger", "L", "--gpus", "0"], "--gpus"),
        (["--fake-gpus", "2", "--ledger", "L", "--gpus", "1", "--for", "soon"], "--for"),
        (["--fake-gpus", "2", "--ledger", "L", "--gpus", "1", "--mem", "lots"], "--mem"),
    ],
)
def test_bad_usage_is_exit_2_and_says_what_is_wrong(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = _cli("reserve", *[str(tmp_path / a) if a == "L" else a for a in args])
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "L").exists()


def test_a_ledger_turned_off_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpupool", "reserve", "--gpus", "1"],
        capture_output=True, text=True, timeout=60, env={**env(), "GPUPOOL_LEDGER": "off"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "ledger is turned off" in done.stderr


# -- release ----------------------------------------------------------------------------


def test_release_of_a_program_s_allocation_is_refused(
    ledger: Path, start: Callable[..., Member]
) -> None:
    info = start(ledger).ready()
    (holder,) = _status(ledger).holders
    done = _cli("release", str(holder.id), "--ledger", str(ledger))
    assert done.returncode == 1
    assert (
        f"allocation {holder.id} belongs to a running program (pid {info['pid']}, " in done.stderr
    )
    assert "only reservations made with gpupool reserve can be released" in done.stderr
    assert _status(ledger).holders == (holder,)  # untouched


def test_release_of_an_unknown_id_is_exit_1(ledger: Path, tmp_path: Path) -> None:
    ledger.mkdir()
    done = _cli("release", "99", "--ledger", str(ledger))
    assert done.returncode == 1
    assert "there is no reservation 99" in done.stderr
    assert os.listdir(ledger) == []  # looking created nothing


def test_release_of_another_user_s_reservation_is_refused(
    ledger: Path, spawned: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's uid is the one thing faked: the reservation and its ledger are real."""
    process = _reserve(spawned, ledger, "--gpus", "1")
    _lines(process, 2)
    holder = _reservation(ledger)
    assert holder is not None
    assert holder.user
    monkeypatch.setattr(release_module.os, "geteuid", lambda: 4242)
    assert release_module.release(holder.id, ledger=ledger) == 1
    assert _reservation(ledger) == holder
    assert process.poll() is None
    monkeypatch.undo()  # root may
    assert release_module.release(holder.id, ledger=ledger) == 0
    process.communicate(timeout=60)
    assert process.returncode == 0


def _runs_as(uid: int) -> bool:
    try:
        done = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             sys.executable, "-c", "import gpupool"],
            capture_output=True, timeout=60, env=env(), cwd="/",
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_release_between_two_real_uids_is_refused_and_root_may() -> None:
    if os.geteuid() != 0 or not (_runs_as(65534) and _runs_as(65533)):
        pytest.skip("needs root, and a Python that uids 65534 and 65533 can run")
    # Outside pytest's own temporary directories, which other users cannot enter.
    base = Path(tempfile.mkdtemp(prefix="gpupool-uids-", dir="/tmp"))
    os.chmod(base, 0o755)
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /dev/shm: every user may create the ledger there
    try:
        _release_between_uids(shared / "ledger")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _release_between_uids(ledger: Path) -> None:

    def as_uid(uid: int, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                sys.executable, "-m", "gpupool", *args]  # fmt: skip

    reserve = subprocess.Popen(
        as_uid(65534, "reserve", "--fake-gpus", "2", "--ledger", str(ledger), "--gpus", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env(), cwd="/",
    )  # fmt: skip
    try:
        _lines(reserve, 2)
        holder = _reservation(ledger)
        assert holder is not None
        assert holder.uid == 65534
        refused = subprocess.run(
            as_uid(65533, "release", str(holder.id), "--ledger", str(ledger)),
            capture_output=True, text=True, timeout=60, env=env(), cwd="/",
        )  # fmt: skip
        assert refused.returncode == 1
        assert f"reservation {holder.id} belongs to {holder.user}" in refused.stderr
        assert "only they or root can release it" in refused.stderr
        assert reserve.poll() is None
        done = _cli("release", str(holder.id), "--ledger", str(ledger))  # as root
        assert done.returncode == 0, done.stderr
        reserve.communicate(timeout=60)
        assert reserve.returncode == 0
    finally:
        if reserve.poll() is None:
            reserve.kill()
        reserve.communicate(timeout=30)


def _hold(kind: str = "reservation") -> HoldRow:
    return HoldRow(
        id=5, member="m", ticket=None, gpus=(fake_uuid(0),), memory_mb=0, exclusive=True,
        priority=0, expected_duration=None, experiment_id=None, granted_at=0.0, since=0.0,
        jobs=(), kind=kind, until=None, orphaned=False,
    )  # fmt: skip


def _member(uid: int = 1000, namespace: str | None = "pid:[1]") -> MemberRow:
    return MemberRow("m", 77, namespace, uid, "alice", "python train.py", 0.0, None)


def test_the_refusals_as_the_rows_decide_them() -> None:
    here = "pid:[1]"
    allocation = refusal_of(_hold("allocation"), _member(), euid=1000, pid_namespace=here)
    assert allocation == (
        "allocation 5 belongs to a running program (pid 77, python train.py); only "
        "reservations made with gpupool reserve can be released"
    )
    other = refusal_of(_hold(), _member(uid=1000), euid=1001, pid_namespace=here)
    assert other == "reservation 5 belongs to alice; only they or root can release it"
    assert refusal_of(_hold(), _member(uid=1000), euid=0, pid_namespace=here) is None
    assert refusal_of(_hold(), _member(uid=1000), euid=1000, pid_namespace=here) is None
    container = refusal_of(_hold(), _member(namespace="pid:[2]"), euid=0, pid_namespace=here)
    assert container is not None
    assert "another PID namespace" in container
    assert refusal_of(_hold(), None, euid=1001, pid_namespace=here) is None  # holder gone


def test_release_of_a_reservation_whose_process_died_says_so(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1")
    _lines(process, 2)
    holder = _reservation(ledger)
    assert holder is not None
    process.kill()
    process.communicate(timeout=30)
    # The ledger still has its row (nobody reaped it), but its lock is free.
    store = LedgerStore(ledger)
    try:
        assert holder.id in store.read().holds
    finally:
        store.close_connection()
    done = _cli("release", str(holder.id), "--ledger", str(ledger))
    assert done.returncode == 0
    assert "has ended already" in done.stderr


def test_a_reserve_killed_with_sigkill_leaves_its_command_orphaned_until_it_ends(
    ledger: Path, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1", "--", "sleep", "600")
    holder = wait_for(lambda: _registered(ledger), "the reservation and its job")
    (job,) = holder.job_pids
    try:
        process.kill()
        process.wait(timeout=30)  # not communicate: the job holds the pipes open
        orphan = _reservation(ledger)
        assert orphan is not None
        assert orphan.orphaned
        assert orphan.id == holder.id
    finally:
        os.killpg(job, signal.SIGKILL)
    wait_for(lambda: gone(job), "the job to end")
    assert _status(ledger).holders == ()


def test_a_rebuilt_ledger_gets_the_reservation_back_with_its_end(
    ledger: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    process = _reserve(spawned, ledger, "--gpus", "1", "--for", "1h")
    _lines(process, 2)
    before = _reservation(ledger)
    assert before is not None
    (ledger / "ledger.db").write_bytes(b"this is not a database" * 100)
    after = wait_for(lambda: _reservation(ledger), "the reservation to be written back")
    assert after.until == before.until
    assert after.gpu_uuids == before.gpu_uuids
    assert after.pid == process.pid
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 0


def test_a_reader_of_the_environment_that_went_away_does_not_end_the_hold(
    ledger: Path, start: Callable[..., Member], spawned: list[subprocess.Popen[str]]
) -> None:
    holder = start(ledger, "--gpus", "2")
    holder.ready()
    process = _reserve(spawned, ledger, "--gpus", "1")
    wait_for(lambda: _status(ledger).waiters, "the reservation to queue")
    assert process.stdout is not None
    process.stdout.close()  # like `| head`, gone before anything was printed
    holder.close()
    reservation = wait_for(lambda: _reservation(ledger), "the reservation")
    assert reservation.pid == process.pid
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "ended (released)" in err


def test_on_a_terminal_the_command_reads_what_is_typed_and_ctrl_c_reaches_it(
    ledger: Path,
) -> None:
    if shutil.which("setsid") is None:
        pytest.skip("needs setsid(1) to give the CLI a controlling terminal")
    program = (
        "try:\n"
        "    print('got', input('prompt> '), flush=True)\n"
        "    import time; time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True); raise SystemExit(5)\n"
    )
    controller, terminal = pty.openpty()
    # setsid -c: a session whose controlling terminal is the pty, with the CLI in the
    # foreground, so that the terminal itself sends Ctrl-C's SIGINT to the CLI.
    process = subprocess.Popen(
        ["setsid", "-c", sys.executable, "-m", "gpupool", "reserve", "--fake-gpus", "1",
         "--ledger", str(ledger), "--gpus", "1", "--", sys.executable, "-c", program],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env(),
    )  # fmt: skip
    os.close(terminal)
    seen = b""

    def until(text: bytes) -> bool:
        nonlocal seen
        while text not in seen:
            readable, _, _ = select.select([controller], [], [], 30)
            if not readable:
                return False
            try:
                seen += os.read(controller, 4096)
            except OSError:  # EIO: nobody has the terminal open any more
                return False
        return True

    try:
        assert until(b"prompt> "), seen
        os.write(controller, b"typed\r")
        assert until(b"got typed"), seen
        os.write(controller, b"\x03")  # Ctrl-C, as the terminal sends it
        assert until(b"interrupted"), seen
        assert process.wait(timeout=60) == 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        os.close(controller)
    assert _status(ledger).holders == ()
