"""Fixtures that put the fake libnvidia-ml under the real nvidia-ml-py bindings."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..fake_nvml import FakeMachine, build_library, find_compiler

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fake_nvml_build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Builds (once per variant) the fake library; returns the directory holding it."""
    if find_compiler() is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build the fake libnvidia-ml.so.1")
    built: dict[tuple[str, ...], Path] = {}

    def build(*defines: str) -> Path:
        if defines not in built:
            directory = tmp_path_factory.mktemp("fake-nvml-" + ("-".join(defines) or "full"))
            build_library(directory, *defines)
            built[defines] = directory
        return built[defines]

    return build


@pytest.fixture(scope="session")
def fake_nvml_lib(fake_nvml_build: Callable[..., Path]) -> ctypes.CDLL:
    """The full fake library, loaded in this process where pynvml will find it."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install .[nvml])")
    import pynvml

    path = fake_nvml_build() / "libnvidia-ml.so.1"
    # Loaded by absolute path first, the library answers pynvml's later
    # CDLL("libnvidia-ml.so.1"): the dynamic loader matches it by soname.
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    pynvml._LoadNvmlLibrary()
    if not hasattr(pynvml.nvmlLib, "fakeNvmlInitCount"):
        pytest.skip("a real libnvidia-ml.so.1 was loaded into this process before the fake")
    return lib


@pytest.fixture
def machine(
    fake_nvml_lib: ctypes.CDLL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeMachine]:
    """An empty fake machine for the in-process library; add GPUs with ``add_gpu``.

    Afterwards, every nvmlInit must have been matched by an nvmlShutdown.
    """
    state = FakeMachine(tmp_path / "nvml-state")
    state.write()
    monkeypatch.setenv("FAKE_NVML_STATE", str(state.state_path))
    yield state
    assert fake_nvml_lib.fakeNvmlInitCount() == 0, "an NVMLProvider was left open"


def subprocess_env(library_dir: Path | None, state: FakeMachine | None) -> dict[str, str]:
    """Environment for ``[sys.executable, "-m", ...]`` against a fake (or no) NVML."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_NVML"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    if library_dir is not None:
        env["LD_LIBRARY_PATH"] = str(library_dir)
    else:
        env.pop("LD_LIBRARY_PATH", None)
    if state is not None:
        env["FAKE_NVML_STATE"] = str(state.state_path)
    return env


PYTHON = sys.executable
