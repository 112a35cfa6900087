"""``gpupool journal plot`` on journals of real runs: a ``gpupool run`` with a retried job,
a ParallelRunner sweep with CPU-only tasks, and a journal a live run is writing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpupool import (
    FakeGPUProvider,
    GPUAllocation,
    GPUResourcePool,
    Journal,
    ParallelRunner,
    TaskStatus,
)
from gpupool._cli.journal import main
from gpupool._cli.plot import time_axis
from tests.gpupool_command import command_env, killed_on_exit, run_gpupool

pytest.importorskip("matplotlib")

SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gpupool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_gpupool(*args, cwd=cwd, timeout=120)


def _bars(svg_text: str) -> list[str]:
    """The hover title of every bar of a picture, in drawing order."""
    root = ET.fromstring(svg_text)
    titles = []
    for group in root.iter(f"{SVG}g"):
        if group.get("id", "").startswith("gpupool-bar-"):
            title = group.find(f"{SVG}title")
            assert title is not None
            assert title.text
            assert group.find(f".//{SVG}path") is not None  # the bar itself
            titles.append(title.text)
    return titles


def _texts(svg_text: str) -> set[str]:
    return {t.text or "" for t in ET.fromstring(svg_text).iter(f"{SVG}text")}


@pytest.fixture(scope="module")
def run_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The journal of a real ``gpupool run``: a job that fails once and succeeds on
    its retry, a 2-GPU job and a CPU-only one, on 2 fake GPUs."""
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "jobs.txt").write_text(
        textwrap.dedent(
            """\
            sleep 0.3
            [name=flaky retries=1] sleep 0.3; if [ ! -e tried ]; then touch tried; exit 1; fi
            [gpus=2] sleep 0.3
            [gpus=0 name=prep] sleep 0.3
            """
        )
    )
    run = _gpupool("run", "jobs.txt", "--fake-gpus", "2", cwd=workdir)
    assert run.returncode == 0, run.stderr
    return workdir / "jobs.txt.journal.sqlite"


@pytest.mark.parametrize("extension", ["png", "svg", "html"])
def test_each_format_is_what_its_extension_says(
    run_journal: Path, tmp_path: Path, extension: str
) -> None:
    out = tmp_path / f"run.{extension}"
    plot = _gpupool("journal", "plot", str(run_journal), "-o", str(out), cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert plot.stdout == f"journal {run_journal}: wrote {out}\n"
    data = out.read_bytes()
    if extension == "png":
        assert data.startswith(PNG_MAGIC)
        return
    text = data.decode()
    if extension == "html":
        assert text.startswith("<!DOCTYPE html>")
        assert "<script" not in text  # hover titles need no script
        assert "4 task(s), 5 attempt(s) in 3 lane(s)." in text
        text = text[text.index("<svg") : text.index("</svg>") + len("</svg>")]
    # 1 + 2 attempts of one GPU each, a 2-GPU job on two lanes, one CPU-only job.
    titles = _bars(text)
    assert len(titles) == 6
    assert {"GPU 0", "GPU 1", "CPU"} <= _texts(text)
    flaky = sorted(t for t in titles if t.startswith("flaky"))
    assert flaky[0].startswith("flaky\nattempt 1 of 2: failed, retried, GPU ")
    assert "ProcessFailed" in flaky[0]
    assert "exit code 1" in flaky[0]
    assert flaky[1].startswith("flaky\nattempt 2 of 2: succeeded, GPU ")
    (prep,) = (t for t in titles if t.startswith("prep"))
    assert "attempt 1 of 1: succeeded, CPU only" in prep
    assert sum("GPUs 0, 1" in t for t in titles) == 2


def test_the_bars_of_a_run_are_labelled_by_name_or_line(run_journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.svg"
    assert main(["journal", "plot", str(run_journal), "-o", str(out)]) == 0
    texts = _texts(out.read_text())
    assert {"line 1", "flaky", "flaky #2", "line 3", "prep"} <= texts


async def _sweep(journal: Path) -> None:
    tried: set[int] = set()

    async def train(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is not None
        if item == 0 and item not in tried:
            tried.add(item)
            raise ValueError("diverged")
        return item

    async def prep(item: int, allocation: GPUAllocation | None) -> int:
        assert allocation is None
        return item

    async with (
        GPUResourcePool(FakeGPUProvider(count=2), ledger=None) as pool,
        ParallelRunner(pool, max_parallel=4, journal=journal) as runner,
    ):
        results = await runner.map(train, [0, 1, 2], required_gpus=1, retries=1, retry_backoff=0)
        results += await runner.map(prep, [10, 11], required_gpus=0)
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 5


@pytest.mark.anyio
async def test_a_parallel_runner_sweep_draws_cpu_tasks_in_their_lane(tmp_path: Path) -> None:
    journal = tmp_path / "sweep.sqlite"
    await _sweep(journal)
    out = tmp_path / "sweep.svg"
    assert main(["journal", "plot", str(journal), "-o", str(out), "--title", "my sweep"]) == 0
    text = out.read_text()
    assert "my sweep" in _texts(text)
    titles = _bars(text)
    assert len(titles) == 3 + 1 + 2  # the retry is a bar of its own
    cpu = [t for t in titles if "CPU only" in t]
    assert len(cpu) == 2
    assert all(t.startswith(("10 (key ", "11 (key ")) for t in cpu)
    assert sum("failed, retried" in t and "ValueError: diverged" in t for t in titles) == 1


LIVE_RUN = """
import sys, time, anyio
from pathlib import Path
from gpupool import FakeGPUProvider, GPUResourcePool, ParallelRunner

journal, go = sys.argv[1], Path(sys.argv[2])

async def job(item, allocation):
    Path(f"{go}.started").touch()
    while not go.exists():
        await anyio.sleep(0.02)
    return item

async def main():
    async with GPUResourcePool(FakeGPUProvider(count=1), ledger=None) as pool:
        async with ParallelRunner(pool, max_parallel=2, journal=journal) as runner:
            results = await runner.map(job, [1, 2], required_gpus=1)
    print(" ".join(r.status.value for r in results))

anyio.run(main)
"""


def test_a_live_journal_is_drawn_up_to_now_without_disturbing_its_run(tmp_path: Path) -> None:
    journal, go = tmp_path / "live.sqlite", tmp_path / "go"
    script = tmp_path / "live_run.py"
    script.write_text(LIVE_RUN)
    started = subprocess.Popen(
        [sys.executable, str(script), str(journal), str(go)],
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with killed_on_exit(started) as run:
        deadline = time.monotonic() + 60
        while not Path(f"{go}.started").exists():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the live run's job never started"
            time.sleep(0.02)
        out = tmp_path / "live.html"
        plot = _gpupool("journal", "plot", str(journal), "-o", str(out), cwd=tmp_path)
        assert plot.returncode == 0, plot.stderr
        page = out.read_text()
        assert f"live (owned by pid {run.pid})" in page
        assert "Live: drawn up to the moment it was read." in page
        (titles,) = [_bars(page[page.index("<svg") : page.index("</svg>") + 6])]
        # One job runs on the only GPU (drawn up to now); the other still waits.
        assert len(titles) == 1
        assert "attempt 1 of 1: running, GPU 0" in titles[0]
        assert "so far" in titles[0]
        go.touch()
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert stdout.split() == ["succeeded", "succeeded"]
    # The run kept its journal: nothing was taken over or interrupted.
    with sqlite3.connect(journal) as conn:
        assert conn.execute("SELECT sum(interrupted), count(*) FROM tasks").fetchone() == (0, 2)
        assert conn.execute(
            "SELECT count(*) FROM events WHERE note LIKE '%interrupted%'"
        ).fetchone() == (0,)
    conn.close()


def test_a_journal_where_nothing_ran_yet_is_drawn_as_such(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with Journal(path) as journal:
        assert journal.claim("queued-only") is None
    out = tmp_path / "new.svg"
    assert main(["journal", "plot", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    assert _bars(text) == []
    assert "no attempt has started yet" in _texts(text)


def test_an_unknown_extension_is_a_usage_error_and_writes_nothing(
    run_journal: Path, tmp_path: Path
) -> None:
    plot = _gpupool("journal", "plot", str(run_journal), "-o", "run.jpg", cwd=tmp_path)
    assert plot.returncode == 2
    assert plot.stderr == (
        "gpupool: error: --output must end in .png, .svg, .html (the extension chooses the "
        "format), got 'run.jpg'\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_without_output_is_a_usage_error(run_journal: Path, tmp_path: Path) -> None:
    plot = _gpupool("journal", "plot", str(run_journal), cwd=tmp_path)
    assert plot.returncode == 2
    assert "the following arguments are required: --output/-o" in plot.stderr


def test_a_missing_journal_is_one_line_and_exit_2(tmp_path: Path) -> None:
    plot = _gpupool("journal", "plot", "nope.sqlite", "-o", "run.png", cwd=tmp_path)
    assert (plot.returncode, plot.stderr) == (2, "gpupool: error: no journal at 'nope.sqlite'\n")


WITHOUT_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # what an interpreter without matplotlib finds
from gpupool._cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_matplotlib_the_error_names_the_extra(run_journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_MATPLOTLIB,
            "journal",
            "plot",
            str(run_journal),
            "-o",
            str(out),
        ],
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "gpupool: error: gpupool journal plot needs matplotlib: pip install 'gpupool[plot]'\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("horizon", "unit", "step_in_units"),
    [
        (0.001, "seconds", 0.0001),
        (5.8, "seconds", 0.5),
        (299, "seconds", 25),
        (3000, "minutes", 5),
        (2 * 86400, "hours", 5),
    ],
)
def test_long_runs_are_read_in_minutes_or_hours(
    horizon: float, unit: str, step_in_units: float
) -> None:
    got_unit, scale, step = time_axis(horizon)
    assert (got_unit, step / scale) == (unit, pytest.approx(step_in_units))
    assert horizon / step <= 12
