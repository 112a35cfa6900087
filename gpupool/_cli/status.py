"""``gpupool status``: the GPUs this process may use, as the pool would see them."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from .._core.model import GPUStats
from ..providers import FakeGPUProvider, NVMLProvider
from .args import fake_gpus_arg
from .console import OutputConsole

__all__ = ["add_parser", "gpu_to_json", "run"]

#: Processes listed per GPU in the table before "+N more".
_MAX_PROCESSES = 4


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the GPUs: memory, utilization, health, processes",
        description=(
            "Show the GPUs this process may use (after CUDA_VISIBLE_DEVICES), as NVML "
            "reports them: memory used/total in MiB, utilization, health and the compute "
            "processes on each."
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON array, one object per GPU"
    )
    parser.add_argument(
        "--fake-gpus",
        type=fake_gpus_arg(1, label="N"),
        metavar="N",
        help="show N idle fake GPUs instead of asking NVML (for machines without GPUs)",
    )
    parser.set_defaults(handler=run)


def gpu_to_json(gpu: GPUStats) -> dict[str, Any]:
    """One GPU as a JSON object (the ``--json`` format; sizes in MiB)."""
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "pci_bus_id": gpu.pci_bus_id,
        "memory_total_mb": gpu.memory_total_mb,
        "memory_used_mb": gpu.memory_used_mb,
        "memory_free_mb": gpu.memory_free_mb,
        "utilization_pct": gpu.utilization_pct,
        "healthy": gpu.healthy,
        "health_detail": gpu.health_detail,
        "processes": [{"pid": p.pid, "used_memory_mb": p.used_memory_mb} for p in gpu.processes],
    }


def run(args: argparse.Namespace) -> int:
    caption: list[str] = []
    if args.fake_gpus is not None:
        gpus: Sequence[GPUStats] = FakeGPUProvider(count=args.fake_gpus).snapshot()
        caption.append(f"{args.fake_gpus} fake GPU(s) (--fake-gpus)")
    else:
        with NVMLProvider() as nvml:
            gpus = nvml.snapshot()
            caption.append(f"NVIDIA driver {nvml.driver_version or 'version unknown'}")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            caption.append(f"CUDA_VISIBLE_DEVICES={visible}")
    if args.json:
        print(json.dumps([gpu_to_json(gpu) for gpu in gpus], indent=2))
        return 0
    console = OutputConsole(highlight=False)
    if not gpus:
        console.print(f"No GPUs visible to this process ({'; '.join(caption)}).")
        return 0
    console.print(_table(gpus, caption))
    return 0


def _table(gpus: Sequence[GPUStats], caption: list[str]) -> Table:
    table = Table(title="GPUs", caption="; ".join(caption), caption_justify="left")
    table.add_column("GPU", justify="right")
    table.add_column("Name")
    table.add_column("Memory used / total (MiB)", justify="right")
    table.add_column("Util", justify="right")
    table.add_column("Health")
    table.add_column("Processes (pid: MiB)")
    for gpu in gpus:
        percent = (
            round(100 * gpu.memory_used_mb / gpu.memory_total_mb) if gpu.memory_total_mb else 0
        )
        memory = f"{gpu.memory_used_mb:,} / {gpu.memory_total_mb:,} ({percent}%)"
        util = "n/a" if gpu.utilization_pct is None else f"{gpu.utilization_pct:.0f}%"
        if gpu.healthy:
            health = Text("ok", style="green")
        else:
            health = Text(f"UNHEALTHY: {gpu.health_detail or 'unknown'}", style="bold red")
        table.add_row(str(gpu.index), gpu.name, memory, util, health, _processes(gpu))
    return table


def _processes(gpu: GPUStats) -> str:
    shown = [
        f"{p.pid}: {'?' if p.used_memory_mb is None else f'{p.used_memory_mb:,}'}"
        for p in gpu.processes[:_MAX_PROCESSES]
    ]
    if len(gpu.processes) > _MAX_PROCESSES:
        shown.append(f"+{len(gpu.processes) - _MAX_PROCESSES} more")
    return ", ".join(shown) or "-"
