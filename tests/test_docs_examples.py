"""Every Python example of README.md and docs/ runs, on fake GPUs: a doc that lies fails here.

The convention (``tests/docs_blocks.py``; for authors, docs/architecture.md,
"Writing docs"): every ```` ```python ```` fence is run unless the line right
before it is ``<!-- not-run: WHAT IT NEEDS -->``; ``<!-- continues -->`` joins a
fence to the previous one of its page; ``--8<-- "PATH"`` includes a file of the
repository (the tutorial's and the cookbook's scripts live in docs/examples/).

How a block runs, as a user would run it:

* as a script, ``python3 block.py``, in a fresh temporary directory holding
  ``train.py`` (docs/examples/train.py: the stand-in for the reader's own
  training script that the examples start);
* a block that awaits at top level (an excerpt of async code) runs as the
  asyncio REPL (``python -m asyncio``) or Jupyter would run it;
* with the *real* nvidia-ml-py bindings over the fake ``libnvidia-ml.so.1`` of
  tests/fake_nvml, so ``GPUResourcePool()`` with its default NVML provider sees
  4 fake 80 GB A100s unchanged; ``GPUPOOL_LEDGER`` is a directory of the block's own,
  so blocks never see each other's GPUs; ``python`` and ``gpupool`` are on PATH.

The blocks run in parallel subprocesses (one per core), started together when
the first of them is asked for, so the whole page set costs a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from .docs_blocks import Block, DocsError, blocks_of, has_top_level_await, included_files
from .docs_env import EXAMPLES, REPO, fake_gpu_environment

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
#: What a block may take; the slowest (an Optuna study, dozens of subprocesses) take seconds.
BLOCK_TIMEOUT = 90

#: Runs a block with top-level await as ``python -m asyncio`` would.
TOP_LEVEL_AWAIT = """\
import ast, sys, anyio
path = sys.argv[1]
code = compile(open(path).read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__", "__file__": path}
async def main():
    await eval(code, namespace)
anyio.run(main)
"""


def _collect() -> tuple[list[Block], dict[str, str]]:
    blocks: list[Block] = []
    broken: dict[str, str] = {}
    for page in PAGES:
        name = page.relative_to(REPO).as_posix()
        try:
            blocks += blocks_of(page, REPO)
        except DocsError as error:
            broken[name] = str(error)
    return blocks, broken


BLOCKS, BROKEN = _collect()
RUNNABLE = [block for block in BLOCKS if block.not_run is None]


@pytest.mark.parametrize("page", [p.relative_to(REPO).as_posix() for p in PAGES])
def test_page_follows_the_convention(page: str) -> None:
    assert page not in BROKEN, BROKEN.get(page)


def test_every_example_file_is_shown() -> None:
    """A script in docs/examples/ that no page includes would be shown to nobody, and run by nobody."""
    shown = included_files(BLOCKS)
    files = {
        path.relative_to(REPO).as_posix()
        for path in EXAMPLES.rglob("*")
        if path.is_file() and path.suffix == ".py"
    }
    assert files, "docs/examples/ holds the tutorial's and the cookbook's scripts"
    assert files <= shown, f"included by no page: {sorted(files - shown)}"


@attrs.frozen
class Outcome:
    returncode: int
    output: str


class DocRuns:
    """Runs the selected blocks in parallel subprocesses, all started at the first request."""

    def __init__(self, selected: list[Block], env: dict[str, str], scratch: Path) -> None:
        self._selected = selected
        self._env = env
        self._scratch = scratch
        self._futures: dict[str, Future[Outcome]] = {}
        self._executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))

    def outcome(self, block: Block) -> Outcome:
        if not self._futures:
            for each in self._selected:
                self._futures[each.id] = self._executor.submit(self._run, each)
        if block.id not in self._futures:
            self._futures[block.id] = self._executor.submit(self._run, block)
        return self._futures[block.id].result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, block: Block) -> Outcome:
        where = Path(tempfile.mkdtemp(prefix=block.id.replace("/", "_").replace(":", "_") + "-",
                                      dir=self._scratch))  # fmt: skip
        shutil.copy(EXAMPLES / "train.py", where / "train.py")
        script = where / "block.py"
        script.write_text(block.script, encoding="utf-8")
        command = [sys.executable, str(script)]
        if has_top_level_await(block.script, block.id):
            command = [sys.executable, "-c", TOP_LEVEL_AWAIT, str(script)]
        env = {**self._env, "GPUPOOL_LEDGER": str(where / "ledger")}
        try:
            done = subprocess.run(
                command,
                cwd=where,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or "") + (expired.stderr or "")
            return Outcome(-1, f"still running after {BLOCK_TIMEOUT} s\n{output}")
        return Outcome(done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="session")
def doc_runs(request: pytest.FixtureRequest) -> Iterator[DocRuns]:
    scratch = Path(tempfile.mkdtemp(prefix="gpupool-docs-"))
    selected = [
        item.callspec.params["block"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_example_runs"
    ]
    runs = DocRuns(selected, fake_gpu_environment(scratch), scratch)
    yield runs
    runs.close()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_example_runs(block: Block, doc_runs: DocRuns) -> None:
    outcome = doc_runs.outcome(block)
    assert outcome.returncode == 0, (
        f"{block.id} exited {outcome.returncode}; the script was:\n{block.script}\n"
        f"its output:\n{outcome.output}"
    )


def test_blocks_marked_not_run_say_what_they_need() -> None:
    for block in BLOCKS:
        if block.not_run is not None:
            assert len(block.not_run.split()) >= 2, f"{block.id}: not-run: {block.not_run!r}"


def test_a_failing_block_fails_and_the_fake_gpus_are_the_default_pools(doc_runs: DocRuns) -> None:
    """The harness itself: a block's exit status counts, and NVML is the fake machine."""
    failing = Block("page.md", 1, "raise SystemExit(3)\n")
    assert doc_runs.outcome(failing).returncode == 3
    excerpt = Block(
        "page.md",
        5,
        "import gpupool\n"
        "async with gpupool.GPUResourcePool() as pool:\n"
        "    print([gpu.memory_total_mb for gpu in pool.statistics().gpus])\n",
    )
    outcome = doc_runs.outcome(excerpt)
    assert (outcome.returncode, outcome.output) == (0, "[81920, 81920, 81920, 81920]\n")
