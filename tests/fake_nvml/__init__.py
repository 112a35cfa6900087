"""Build and drive the fake ``libnvidia-ml.so.1`` of ``fake_nvml.c``.

The real nvidia-ml-py bindings load the library by its soname, so a test
either preloads the built file by absolute path in this process (the dynamic
loader then reuses it for ``libnvidia-ml.so.1``), or runs a subprocess with
``LD_LIBRARY_PATH`` pointing at its directory. :class:`FakeMachine` writes the
state file that the library re-reads on every call.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["SOURCE", "FakeDevice", "FakeMachine", "build_library", "find_compiler"]

SOURCE = Path(__file__).with_name("fake_nvml.c")
SONAME = "libnvidia-ml.so.1"
MIB = 1 << 20

# NVML return codes (nvml.h), for injecting faults.
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999


def find_compiler() -> str | None:
    """The system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``), if any."""
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def build_library(directory: Path, *defines: str) -> Path:
    """Compile the fake into ``directory/libnvidia-ml.so.1``; ``defines`` pick a variant."""
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang)")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / SONAME
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-Wall", f"-Wl,-soname,{SONAME}",
         *(f"-D{d}" for d in defines), "-o", str(target), str(SOURCE)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return target


@dataclasses.dataclass
class FakeDevice:
    """A GPU (or a MIG instance) of the fake machine; sizes in MiB."""

    uuid: str
    name: str = "NVIDIA A100-SXM4-40GB"
    total_mb: int = 40_960
    used_mb: int = 0
    reserved_mb: int = 0
    utilization: int = 0
    bus_id: str | None = None
    #: pid -> MiB held (``None``: NVML cannot say).
    processes: dict[int, int | None] = dataclasses.field(default_factory=dict)
    #: Injected NVML return codes: "error" (every query), "memory_error",
    #: "memory_v2_error", "util_error", "procs_error", "handle_error", "uuid_error",
    #: "name_error".
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    #: ``None``: not MIG capable; ``False``/``True``: MIG mode off/on.
    mig: bool | None = None
    mig_slots: int = 7
    instances: dict[int, FakeDevice] = dataclasses.field(default_factory=dict)

    def lines(self, prefix: str) -> list[str]:
        out = [
            f"{prefix}.uuid={self.uuid}",
            f"{prefix}.name={self.name}",
            f"{prefix}.total={self.total_mb * MIB}",
            f"{prefix}.used={self.used_mb * MIB}",
            f"{prefix}.reserved={self.reserved_mb * MIB}",
            f"{prefix}.util={self.utilization}",
        ]
        if self.bus_id is not None:
            out.append(f"{prefix}.bus_id={self.bus_id}")
        if self.processes:
            procs = ",".join(
                f"{pid}:{'-' if mb is None else mb * MIB}" for pid, mb in self.processes.items()
            )
            out.append(f"{prefix}.procs={procs}")
        out += [f"{prefix}.{key}={code}" for key, code in self.errors.items()]
        if self.mig is not None:
            out += [f"{prefix}.mig={int(self.mig)}", f"{prefix}.mig_max={self.mig_slots}"]
        for slot, instance in self.instances.items():
            out += instance.lines(f"{prefix}.mig.{slot}")
        return out


def gpu_uuid(n: int) -> str:
    return f"GPU-{n:08x}-1111-4222-8333-444455556666"


def mig_uuid(gpu: int, slot: int) -> str:
    return f"MIG-{gpu:04x}{slot:04x}-aaaa-5bbb-8ccc-ddddeeeeffff"


@dataclasses.dataclass
class FakeMachine:
    """What the fake library reports; call :meth:`write` after changing it."""

    state_path: Path
    gpus: list[FakeDevice] = dataclasses.field(default_factory=list)
    init_error: int = 0
    driver_version: str = "550.54.15"

    def add_gpu(self, **fields: object) -> FakeDevice:
        fields.setdefault("uuid", gpu_uuid(len(self.gpus)))
        device = FakeDevice(**fields)  # type: ignore[arg-type]
        self.gpus.append(device)
        self.write()
        return device

    def write(self) -> None:
        lines = [
            f"init_error={self.init_error}",
            f"driver_version={self.driver_version}",
            f"count={len(self.gpus)}",
        ]
        for n, gpu in enumerate(self.gpus):
            lines += gpu.lines(f"gpu.{n}")
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.state_path)  # atomic: a reader never sees half a file
