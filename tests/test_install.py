"""What a plain ``pip install gpupool`` promises: the package imports and works with
only its declared dependencies, and ``import gpupool`` stays light.

Regression for issue 10 item 1: ``import gpupool`` needed sniffio, which no longer
comes with anyio and which only the ``dev`` extra (through trio) installed; and it
imported rich, which only the CLI and the progress display use.

Each check runs in a fresh interpreter, where ``sys.modules`` shows what importing
gpupool itself pulled in. Packages a plain install lacks are hidden by a meta-path
finder, so the dev environment (which has them) can stand in for a plain one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: Modules a plain install of gpupool does not have (they come with trio or the extras).
ABSENT_IN_PLAIN_INSTALL = (
    "sniffio",
    "trio",
    "optuna",
    "pynvml",
    "hypothesis",
    "hydra",
    "omegaconf",
    "cloudpickle",
)

#: Modules only a part of gpupool needs, imported when that part is used.
LAZY = ("rich", "optuna", "pynvml", "hypothesis", "trio", "hydra", "cloudpickle")

HIDE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    """
)


def run_python(code: str, hidden: tuple[str, ...] = ABSENT_IN_PLAIN_INSTALL) -> str:
    """Run ``code`` in a fresh interpreter with ``hidden`` uninstallable; its stdout."""
    script = f"HIDDEN = {hidden!r}\n{HIDE}\n{textwrap.dedent(code)}"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_gpupool_needs_no_sniffio_nor_any_extra() -> None:
    out = run_python(
        """
        import gpupool
        print(gpupool.GPUResourcePool.__name__)
        """
    )
    assert out.split() == ["GPUResourcePool"]


@pytest.mark.parametrize("module", LAZY)
def test_import_gpupool_does_not_import(module: str) -> None:
    # Nothing hidden: even where the module is installed, importing gpupool must
    # not import it (a hidden module would pass this test for the wrong reason).
    out = run_python(
        f"""
        import sys
        import gpupool
        print({module!r} in sys.modules)
        """,
        hidden=(),
    )
    assert out.split() == ["False"]


def test_the_progress_display_imports_rich_when_made() -> None:
    out = run_python(
        """
        import io
        import sys

        import gpupool

        print("rich" in sys.modules)
        from rich.console import Console

        gpupool.ProgressDisplay(gpupool.ParallelRunner(), console=Console(file=io.StringIO()))
        print("rich" in sys.modules)
        """
    )
    assert out.split() == ["False", "True"]


def test_pool_and_run_blocking_work_without_sniffio_on_asyncio() -> None:
    # Without sniffio anyio tells asyncio's loop thread from a worker thread by
    # itself; run_blocking takes one path from async code, another from a thread.
    out = run_python(
        """
        import anyio
        import anyio.to_thread
        import gpupool

        def in_thread():
            return gpupool.run_blocking(lambda: "from a thread")

        async def main():
            async with gpupool.GPUResourcePool(gpupool.FakeGPUProvider(count=2)) as pool:
                async with pool.allocation(required_gpus=2) as allocation:
                    print(len(allocation.gpu_indices))
                print(pool.statistics().free_gpus)
            print(await gpupool.run_blocking(lambda: "from async code"))
            print(await anyio.to_thread.run_sync(in_thread))

        anyio.run(main)
        """
    )
    assert out.splitlines() == ["2", "(0, 1)", "from async code", "from a thread"]


def test_gpupool_testing_imports_without_pytest_or_hypothesis() -> None:
    # A plain install has neither: the fakes work, and a strategy says what to install.
    out = run_python(
        """
        import gpupool.testing as testing

        print(testing.FakeGPUs.of(2).provider().count)
        try:
            testing.request_kwargs(2)
        except ImportError as error:
            print(error)
        """,
        hidden=(*ABSENT_IN_PLAIN_INSTALL, "pytest", "_pytest"),
    )
    assert out.splitlines() == [
        "2",
        "gpupool.testing's strategies need Hypothesis: pip install hypothesis",
    ]


def test_the_pytest_plugin_imports_neither_hypothesis_nor_trio() -> None:
    # pytest imports the plugin in every run wherever gpupool is installed.
    out = run_python(
        """
        import sys
        import gpupool.testing.plugin

        print(sorted(m for m in ("hypothesis", "trio", "gpupool.testing.leases") if m in sys.modules))
        """,
        hidden=(),
    )
    assert out.split() == ["[]"]
