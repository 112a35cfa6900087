"""``gpupool status``: the machine-wide view (tables, ``--json``, ``--watch``, errors).

The view comes from ``gpupool._cli.status._machine_status``; these tests put
hand-made :class:`MachineStatus` values there (``tests/status_samples.py``)
and check what the real command prints, in this process through
``gpupool._cli.main.main`` and, for ``--watch``, in a real child process on a
pseudo-terminal stopped with SIGINT. ``tests/nvml/test_cli_status.py`` runs
the command over the fake NVML library.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from gpupool import GPUPoolError, ProviderError
from gpupool._cli import status as status_command
from gpupool._cli.main import main
from gpupool._cli.status import status_to_json
from gpupool._cli.status_text import ago, clock, duration, short_command
from gpupool._ledger.view import MachineStatus
from gpupool.providers import FakeGPUProvider

from . import status_samples as samples

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "machine.md"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times in UTC, so that every one printed is known."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _show(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: MachineStatus | BaseException,
    *args: str,
    width: int = 140,
) -> tuple[int, str, str]:
    """``gpupool status ARGS`` over ``status`` on a ``width``-column console: (code, out, err)."""

    def machine_status(parsed: argparse.Namespace) -> MachineStatus:
        if isinstance(status, BaseException):
            raise status
        return status

    monkeypatch.setattr(status_command, "_machine_status", machine_status)
    monkeypatch.setenv("COLUMNS", str(width))
    code = main(["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _row(text: str, first: int) -> str:
    """The first table row of ``text`` whose first cell is ``first``, its folded lines
    joined cell by cell (so that a cell folded over two lines reads as one)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"│ +{first} │", line))
    end = start + 1
    while end < len(lines) and re.match(r"│ +│", lines[end]):
        end += 1
    cells = [line.strip("│").split("│") for line in lines[start:end]]
    joined = [
        " ".join(part.strip() for part in column if part.strip())
        for column in zip(*cells, strict=True)
    ]
    return "│" + "│".join(f" {cell} " for cell in joined) + "│"


def _gpu_block(text: str, index: int) -> str:
    """GPU ``index``'s row of the GPUs table (the first table), its cells joined."""
    return _row(text, index)


# ---------------------------------------------------------------- the words


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0s"),  # a holder's clock a little ahead of ours
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (725, "12m"),
        (3600, "1h"),
        (7380, "2h 3m"),
        (86_400, "1d"),
        (90_000, "1d 1h"),
    ],
)
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_clock_times_carry_the_date_only_on_another_day() -> None:
    assert clock(samples.NOW - 720, samples.NOW) == "13:39:07"
    assert clock(samples.NOW - 90_000, samples.NOW) == "2024-04-30 12:51"
    assert ago(samples.NOW - 720, samples.NOW) == "12m ago (13:39:07)"


@pytest.mark.parametrize(
    ("command", "short"),
    [
        ("/usr/bin/python3 /home/a/sweep/train.py --lr 0.1", "python3 train.py --lr 0.1"),
        ("python -m pkg.train /data/x", "python -m pkg.train /data/x"),  # data paths stay
        ("/opt/tools/bin/jupyter lab", "jupyter lab"),
        ("bash ./run.sh", "bash run.sh"),
        ("", "?"),
        ("x" * 100, "x" * 59 + "…"),
    ],
)
def test_commands_are_shortened_to_what_tells_jobs_apart(command: str, short: str) -> None:
    assert short_command(command) == short


# ---------------------------------------------------------------- the tables


def test_who_is_using_gpu_3_and_since_when(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _show(monkeypatch, capsys, samples.BUSY)
    assert (code, err) == (0, "")
    gpu3 = _gpu_block(out, 3)
    assert "dave pid 5000, exclusive, 1d 1h ago (2024-04-30 12:51), ORPHANED" in gpu3
    assert "UNHEALTHY: GPU is lost" in gpu3
    assert "70,000 / 81,920 (85%)" in gpu3
    gpu0 = _gpu_block(out, 0)
    assert "alice pid 4242, exclusive, 12m ago (13:39:07)" in gpu0
    assert "63%" in gpu0
    assert "n/a" in _gpu_block(out, 2)  # utilization unknown
    # One model: named once, in the title.
    assert "GPUs: 4 x NVIDIA A100-SXM4-80GB" in out
    assert out.count("NVIDIA A100-SXM4-80GB") == 1
    assert "Machine status at 13:51:07: 4 GPU(s), 4 held through gpupool" in out
    assert f"ledger {samples.LEDGER}" in out


def test_holders_show_user_pid_command_key_memory_mode_and_since(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY)
    holders = out[out.index("Holders") : out.index("Waiting")]
    rows = [line for line in holders.splitlines() if re.match(r"│ +\d+ │", line)]
    # Oldest first, as the view lists them; ids in the first column.
    assert [row.split("│")[1].strip() for row in rows] == ["15", "12", "7", "13"]
    alice = next(row for row in rows if "alice" in row)
    assert "4242" in alice
    assert "│ 0,1 " in alice
    assert "exclusive" in alice
    assert "12m ago (13:39:07)" in alice
    assert "python3 train.py --lr 0.1 --epochs 100" in alice
    assert "/usr/bin" not in out  # the table shortens; the JSON has the command whole
    assert "key sweep-17" in holders
    carol = next(row for row in rows if "carol" in row)
    assert "8,000 MiB shared" in carol
    assert "45s ago (13:50:22)" in carol
    # dave also holds a GPU this process does not see: shown by its UUID.
    dave = next(row for row in rows if "dave" in row)
    assert "│ 3 +1 hidden " in dave


def test_reservations_show_their_id_and_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY)
    assert "bob pid 777, 20,480 MiB shared, 2h 3m ago (11:48:07), reservation #12" in out
    holders = out[out.index("Holders") :]
    bob = _row(holders, 12)
    assert "reservation, ends in 1h 57m (15:48:07)" in bob
    assert "jupyter lab --no-browser" in bob
    assert "end a reservation with `gpupool release ID`" in out
    overdue = attrs.evolve(samples.BOB, until=samples.NOW - 30)
    status = attrs.evolve(samples.BUSY, holders=(overdue,))
    _, out, _ = _show(monkeypatch, capsys, status)
    assert "reservation, ended 30s ago (13:50:37)" in _row(out[out.index("Holders") :], 12)
    _, out, _ = _show(monkeypatch, capsys, samples.IDLE)
    assert "gpupool release" not in out  # no reservation, no hint


def test_orphaned_holders_are_flagged_with_their_jobs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY)
    assert "ORPHANED: holder gone, its jobs (pid 5001, 5002) still run" in _row(out, 15)
    assert out.count("ORPHANED") == 2  # its GPU's row, and its own
    status = attrs.evolve(samples.BUSY, gpus=samples.BUSY.gpus[:3])
    _, out, _ = _show(monkeypatch, capsys, attrs.evolve(status, holders=(samples.ALICE,)))
    assert "ORPHANED" not in out


def test_holders_in_another_pid_namespace_are_marked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY)
    assert "carol pid 31 (other pid ns), 8,000 MiB shared" in out
    assert "(other pid ns): a pid in another PID namespace (a container), not of this host" in out
    assert "4242 (other" not in out
    elsewhere = attrs.evolve(samples.SMALL, same_pid_namespace=False)
    _, out, _ = _show(monkeypatch, capsys, attrs.evolve(samples.IDLE, waiters=(elsewhere,)))
    assert "9002 (other pid ns)" in _row(out[out.index("Waiting (") :], 1)
    assert "(other pid ns): a pid in another PID namespace" in out
    same = attrs.evolve(samples.CAROL, same_pid_namespace=True)
    status = attrs.evolve(samples.BUSY, holders=(same,), waiters=())
    status = attrs.evolve(status, gpus=(samples.gpu(2, (same,)),))
    _, out, _ = _show(monkeypatch, capsys, status)
    assert "other pid ns" not in out


def test_the_queue_shows_who_waits_for_what_and_for_how_long(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY)
    queue = out[out.index("Waiting (machine-wide queue") : out.index("Not managed")]
    rows = [line for line in queue.splitlines() if re.match(r"│ +\d+ │", line)]
    assert len(rows) == 2
    first, second = rows
    assert first.split("│")[1].strip() == "1"
    assert "carol" in first
    assert "9001" in first
    assert "4 GPUs, exclusive" in first  # every GPU allowed: not listed
    assert "│    0 │" in first  # priority
    assert "3m ago (13:48:05)" in first
    assert "python big.py --gpus 4" in first
    assert "1 GPU, 4,000 MiB shared, of GPU 0,2" in second
    assert "│    5 │" in second
    assert "5s ago (13:51:02)" in second
    assert "key eval-1" in queue
    exclusive_with_memory = attrs.evolve(samples.BIG, min_memory_mb=8_000)
    _, out, _ = _show(
        monkeypatch, capsys, attrs.evolve(samples.BUSY, waiters=(exclusive_with_memory,))
    )
    assert "4 GPUs, exclusive, >= 8,000 MiB free" in out


def test_processes_outside_gpupool_and_vanished_memory_are_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY)
    assert "not managed by gpupool: python3 5151, 1,200 MiB" in _gpu_block(out, 1)
    assert "GONE (pid 6161): 2,048 MiB still counted" in _gpu_block(out, 2)
    table = out[re.search(r"^Not managed by gpupool +$", out, re.M).start() :]  # type: ignore[union-attr]
    rows = [line for line in table.splitlines() if re.match(r"│ +\d+ │", line)]
    assert [row.split("│")[1:3] for row in rows] == [["   1 ", " 5151 "], ["   2 ", " 6161 "]]
    assert "python3" in rows[0]
    assert "1,200 MiB" in rows[0]
    assert "GONE: no such process; the driver still counts its memory" in rows[1]
    assert "2,048 MiB" in rows[1]
    # Several processes on one GPU: summed on its row, each in the table.
    many = samples.gpu(
        0,
        other_processes=(
            samples.OtherProcess(1, 100, "a", True),
            samples.OtherProcess(2, None, None, True),
        ),
    )
    _, out, _ = _show(monkeypatch, capsys, attrs.evolve(samples.IDLE, gpus=(many,)))
    assert "not managed by gpupool: 2 processes, 100+ MiB" in _gpu_block(out, 0)
    assert "? MiB" in out


def test_an_idle_machine_says_free(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _show(monkeypatch, capsys, samples.IDLE, "--fake-gpus", "2")
    assert code == 0
    rows = [line for line in out.splitlines() if "Fake GPU" in line]
    assert len(rows) == 2  # two models: a Name column
    assert all("free" in row and "0 / 24,576 (0%)" in row for row in rows)
    assert "Holders" not in out
    assert "Waiting (" not in out
    assert "Not managed" not in out
    assert "2 fake GPU(s) (--fake-gpus)" in out


def test_no_gpus_is_said_plainly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, out, _ = _show(monkeypatch, capsys, attrs.evolve(samples.IDLE, gpus=()))
    assert code == 0
    assert "No GPUs visible to this process." in out
    assert "CUDA_VISIBLE_DEVICES=" in out


@pytest.mark.parametrize("width", [60, 72, 80, 100, 119, 120, 140, 200])
def test_every_table_fits_the_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], width: int
) -> None:
    _, out, _ = _show(monkeypatch, capsys, samples.BUSY, width=width)
    lines = out.splitlines()
    assert max(map(len, lines)) <= width
    # No table is cut on the right: every bordered line is closed.
    for line in lines:
        if line[:1] in "┏┃┡│└":
            assert line.rstrip()[-1] in "┓┃┩│┘", f"width {width}: {line!r}"
    # The answer to "who holds GPU 3" stays readable on its row.
    assert "dave pid 5000" in _gpu_block(out, 3)


# ---------------------------------------------------------------- --json


def _documented_objects() -> dict[str, dict[str, str]]:
    """The field tables of docs/machine.md's ``gpupool status --json`` section: name -> field -> type."""
    text = DOC.read_text()
    section = text.split("## `gpupool status --json`", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    objects: dict[str, dict[str, str]] = {}
    for heading, body in re.findall(
        r"\n### (?:The |An? )?(.+?) object\n(.*?)(?=\n### |\Z)", section, re.S
    ):
        fields = re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", body, re.M)
        objects[heading] = dict(fields)
    return objects


def _check(value: Any, kind: str, objects: dict[str, dict[str, str]], where: str) -> None:
    """``value`` has the documented ``kind`` ("integer", "string or null", "array of ...")."""
    if kind.endswith(" or null"):
        if value is None:
            return
        kind = kind.removesuffix(" or null")
    if kind.startswith("array of "):
        assert isinstance(value, list), where
        item = kind.removeprefix("array of ")
        item = {
            "strings": "string",
            "integers": "integer",
            "integer-or-null": "integer or null",
        }.get(item, item)
        for i, element in enumerate(value):
            _check(element, item, objects, f"{where}[{i}]")
        return
    if kind.endswith(" objects"):
        name = kind.removesuffix(" objects")
        assert isinstance(value, dict), where
        assert set(value) == set(objects[name]), f"{where}: fields differ from the docs"
        for field, field_kind in objects[name].items():
            _check(value[field], field_kind, objects, f"{where}.{field}")
        return
    scalar = {"integer": int, "number": (int, float), "string": str, "boolean": bool}[kind]
    assert isinstance(value, scalar), f"{where}: {value!r} is not {kind}"
    assert kind == "boolean" or not isinstance(value, bool), f"{where}: {value!r} is not {kind}"


def test_the_json_schema_is_documented_field_by_field() -> None:
    objects = _documented_objects()
    assert set(objects) == {"top-level", "GPU", "holder", "waiter", "other-process"}
    document = json.loads(json.dumps(status_to_json(samples.BUSY)))
    _check(document, "top-level objects", objects, "status")
    _check(
        json.loads(json.dumps(status_to_json(samples.IDLE))), "top-level objects", objects, "idle"
    )
    # What readers of the old --json (an array of these) found in each GPU object.
    old = {"index", "uuid", "name", "memory_total_mb", "memory_used_mb", "memory_free_mb"}
    old |= {"utilization_pct", "healthy", "health_detail"}
    assert old <= set(objects["GPU"])


def test_json_carries_the_whole_view() -> None:
    document = status_to_json(samples.BUSY)
    assert json.loads(json.dumps(document)) == document
    assert document["schema"] == 1
    assert document["ledger"] == samples.LEDGER
    assert document["taken_at"] == samples.NOW
    assert document["taken_at_iso"] == "2024-05-01T13:51:07.250+00:00"
    assert [h["id"] for h in document["holders"]] == [15, 12, 7, 13]
    assert [w["ticket"] for w in document["waiters"]] == [3, 4]
    gpu3 = document["gpus"][3]
    assert gpu3["healthy"] is False
    assert gpu3["health_detail"] == "GPU is lost"
    assert gpu3["memory_free_mb"] == 81_920 - 70_000
    (dave,) = gpu3["holders"]
    assert dave == document["holders"][0]  # the same object, repeated under its GPU
    assert dave["user"] == "dave"
    assert dave["command"] == "gpupool run jobs.txt"
    assert dave["gpu_uuids"] == [samples.UUIDS[3], samples.HIDDEN_UUID]
    assert dave["gpu_indices"] == [3, None]  # a GPU this process does not see
    assert dave["orphaned"] is True
    assert dave["job_pids"] == [5001, 5002]
    assert dave["since"] == samples.NOW - 90_000
    assert dave["since_iso"] == "2024-04-30T12:51:07.250+00:00"
    assert (dave["until"], dave["until_iso"]) == (None, None)
    bob = document["holders"][1]
    assert bob["kind"] == "reservation"
    assert bob["until"] == samples.NOW + 7020
    assert bob["until_iso"] == "2024-05-01T15:48:07.250+00:00"
    assert (bob["exclusive"], bob["memory_mb"]) == (False, 20_480)
    carol = document["holders"][3]
    assert (carol["pid"], carol["same_pid_namespace"]) == (31, False)
    alice = document["holders"][2]
    assert alice["command"] == samples.ALICE.command  # whole, not shortened
    assert alice["key"] == "sweep-17"
    assert alice["gpu_indices"] == [0, 1]
    gpu2 = document["gpus"][2]
    assert gpu2["utilization_pct"] is None
    assert gpu2["memory_reserved_mb"] == 28_480
    assert gpu2["other_processes"] == [
        {"pid": 6161, "memory_mb": 2_048, "name": None, "alive": False}
    ]
    small = document["waiters"][1]
    assert small["gpu_indices"] == [0, 2]
    assert (small["required_gpus"], small["min_memory_mb"], small["priority"]) == (1, 4_000, 5)


def test_json_on_the_command_line_is_that_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _show(monkeypatch, capsys, samples.BUSY, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == status_to_json(samples.BUSY)
    assert "\n  " in out  # indented for a reader


# ---------------------------------------------------------------- errors


class NoLedger(GPUPoolError):
    """Stands in for the ledger's own error (any GPUPoolError is handled alike)."""


@pytest.mark.parametrize(
    "error",
    [
        NoLedger("no ledger at '/nowhere': no gpupool pool has run on this machine"),
        ProviderError("cannot use NVML: the NVIDIA kernel driver is not loaded;\nuse --fake-gpus"),
    ],
)
@pytest.mark.parametrize("json_flag", [(), ("--json",), ("--watch",)])
def test_errors_are_one_line_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: GPUPoolError,
    json_flag: tuple[str, ...],
) -> None:
    code, out, err = _show(monkeypatch, capsys, error, *json_flag)
    assert code == 2
    assert out == ""
    assert err == f"gpupool: error: {' '.join(str(error).split())}\n"


def test_other_exceptions_are_not_swallowed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        _show(monkeypatch, capsys, RuntimeError("a bug"))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--interval", "0"), "SECONDS must be a number of seconds >= 0.1, got '0'"),
        (("--interval", "0.01"), "SECONDS must be a number of seconds >= 0.1, got '0.01'"),
        (("--interval", "soon"), "got 'soon'"),
        (("--interval", "nan"), "got 'nan'"),
        (("--interval", "inf"), "got 'inf'"),
        (("--fake-gpus", "0"), "N must be an int in [1, 1024], got '0'"),
    ],
)
def test_usage_errors(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["status", "--watch", *args])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_interval_needs_watch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _show(monkeypatch, capsys, samples.IDLE, "--interval", "2")
    assert (code, out) == (2, "")
    assert err == "gpupool status: error: --interval SECONDS needs --watch\n"


@pytest.mark.parametrize(
    ("args", "ledger", "fake_count"),
    [
        ((), None, None),
        (("--ledger", "/tmp/some-ledger"), Path("/tmp/some-ledger"), None),
        (("--fake-gpus", "3", "--ledger", "L"), Path("L"), 3),
    ],
)
def test_the_view_comes_from_machine_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    ledger: Path | None,
    fake_count: int | None,
) -> None:
    """``_machine_status`` calls ``gpupool._ledger.status.machine_status(ledger, provider=...)``."""
    calls: list[tuple[object, object]] = []

    def machine_status(ledger: object = None, *, provider: object = None) -> MachineStatus:
        calls.append((ledger, provider))
        return samples.IDLE

    module = types.ModuleType("gpupool._ledger.status")
    module.machine_status = machine_status  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpupool._ledger.status", module)
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["status", *args]) == 0
    assert "Fake GPU 1" in capsys.readouterr().out
    ((given_ledger, provider),) = calls
    assert given_ledger == ledger
    if fake_count is None:
        assert provider is None  # NVML
    else:
        assert isinstance(provider, FakeGPUProvider)
        assert provider.count == fake_count


# ---------------------------------------------------------------- --watch, for real

#: The command in a child process, over the sample views: each call of
#: _machine_status appends its time (the system-wide monotonic clock) to CALLS
#: and returns BUSY taken one second later than the last, so each refresh
#: shows a new clock time; with FAIL in the environment the second call fails.
CHILD = """
import os, sys, time
from tests import status_samples as samples
from gpupool import ProviderError
from gpupool._cli import status
from gpupool._cli.main import main

calls = 0

def machine_status(args):
    global calls
    calls += 1
    with open(os.environ["CALLS"], "a") as file:
        file.write(f"{time.monotonic()}\\n")
    if calls == 2 and os.environ.get("FAIL"):
        raise ProviderError("NVML went away")
    return samples.at(samples.BUSY, samples.NOW + calls)

status._machine_status = machine_status
sys.exit(main(sys.argv[1:]))
"""


@attrs.frozen
class Watched:
    code: int
    out: str
    err: str
    #: When each view was asked for (time.monotonic(), system-wide on Linux).
    calls: list[float]


def _watch(tmp_path: Path, *args: str, terminal: bool, until: str, fail: bool = False) -> Watched:
    """Run ``gpupool status --watch ARGS`` until its output has ``until``, then send SIGINT."""
    calls = tmp_path / "calls"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CALLS": str(calls), "TZ": "UTC"}
    env.update(COLUMNS="100", LINES="200", TERM="xterm")
    if fail:
        env["FAIL"] = "1"
    if terminal:
        reader, writer = pty.openpty()
    else:
        reader, writer = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, "status", "--watch", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=writer,
        stderr=subprocess.PIPE,
    )
    os.close(writer)
    os.set_blocking(reader, False)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while until not in b"".join(chunks).decode(errors="replace"):
            assert process.poll() is None, "the watch ended by itself"
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")
            try:
                chunks.append(os.read(reader, 65536))
            except BlockingIOError:
                time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        os.set_blocking(reader, True)
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(reader)
    assert process.stderr is not None
    err = process.stderr.read().decode()
    process.stderr.close()
    out = b"".join(chunks).decode().replace("\r\n", "\n")
    return Watched(code, out, err, [float(line) for line in calls.read_text().split()])


def _sleeps_between_views(watched: Watched, interval: float) -> None:
    """Not a busy loop: each view is asked for at least ``interval`` after the last
    (a loaded machine only makes the gaps longer)."""
    gaps = [b - a for a, b in itertools.pairwise(watched.calls)]
    assert len(gaps) >= 3
    assert min(gaps) >= interval * 0.95, gaps


def test_watch_redraws_in_place_until_ctrl_c(tmp_path: Path) -> None:
    # The fourth view is taken at NOW + 4 s: 13:51:11.
    watched = _watch(tmp_path, "--interval", "0.2", terminal=True, until="13:51:11")
    assert watched.code == 0
    assert watched.err == ""  # no traceback, no "interrupted"
    assert "\x1b[2K" in watched.out  # rich Live erases the last view before drawing the next
    assert watched.out.endswith("\x1b[?25h")  # and shows the cursor again at the end
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", watched.out)
    for second in range(8, 12):
        assert f"Machine status at 13:51:{second:02d}" in plain
    assert "refreshed every 0.2s, Ctrl-C to stop" in plain
    assert "dave pid 5000" in plain
    _sleeps_between_views(watched, 0.2)


def test_watch_into_a_pipe_prints_each_view_in_turn(tmp_path: Path) -> None:
    watched = _watch(tmp_path, "--interval", "0.2", terminal=False, until="13:51:11")
    assert (watched.code, watched.err) == (0, "")
    assert "\x1b[" not in watched.out  # no cursor movement into a file
    headlines = [line for line in watched.out.splitlines() if line.startswith("Machine status")]
    assert headlines[:3] == [
        f"Machine status at 13:51:{s:02d}: 4 GPU(s), 4 held through gpupool, 2 request(s) waiting"
        for s in (8, 9, 10)
    ]
    _sleeps_between_views(watched, 0.2)


def test_watch_shows_a_failed_refresh_and_goes_on(tmp_path: Path) -> None:
    watched = _watch(tmp_path, "--interval", "0.2", terminal=False, until="13:51:10", fail=True)
    assert (watched.code, watched.err) == (0, "")
    assert "could not read the machine's status: NVML went away" in watched.out
    assert "retrying" in watched.out
    assert "Machine status at 13:51:08" in watched.out
    assert "Machine status at 13:51:09" not in watched.out  # the failed call
    assert "Machine status at 13:51:10" in watched.out


def test_watch_json_prints_one_object_a_line(tmp_path: Path) -> None:
    watched = _watch(
        tmp_path, "--json", "--interval", "0.2", terminal=False, until='"taken_at": 1714571471.25'
    )
    assert (watched.code, watched.err) == (0, "")
    lines = [line for line in watched.out.splitlines() if line]
    documents = [json.loads(line) for line in lines]
    assert [d["taken_at"] for d in documents[:3]] == [
        samples.NOW + 1,
        samples.NOW + 2,
        samples.NOW + 3,
    ]
    assert all(d["schema"] == 1 for d in documents)
    busy = status_to_json(samples.at(samples.BUSY, samples.NOW + 1))
    assert documents[0] == busy
    _sleeps_between_views(watched, 0.2)


def test_watch_json_reports_a_failed_refresh_on_stderr(tmp_path: Path) -> None:
    watched = _watch(
        tmp_path,
        "--json",
        "--interval",
        "0.2",
        terminal=False,
        until='"taken_at": 1714571470.25',
        fail=True,
    )
    assert watched.code == 0
    assert watched.err == "gpupool: error: NVML went away\n"
    taken = [json.loads(line)["taken_at"] for line in watched.out.splitlines() if line]
    assert taken[:2] == [samples.NOW + 1, samples.NOW + 3]
