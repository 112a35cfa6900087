"""The tables ``gpupool status`` shows: a :class:`MachineStatus` as rich renderables.

Built to answer "who is using GPU 3, and since when?" at a glance: the first
table has one row per GPU whose last column names every holder (user, pid,
exclusive or how much memory, how long), what else uses it, or that it is
free or unhealthy. The tables under it give the details: every ledger holder
(command, job key, reservation and its end, orphans), the machine-wide queue
in order of service, and the processes gpupool does not manage, the ones that
no longer exist flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._ledger.view import LedgerHolder, LedgerWaiter, MachineGPU, MachineStatus, OtherProcess
from .status_text import ago, clock, duration, mib, pid_text, short_command

__all__ = ["gpu_names", "machine_view"]

#: Said under the tables whenever a pid of another PID namespace is shown.
OTHER_NAMESPACE_NOTE = (
    "(other pid ns): a pid in another PID namespace (a container), not of this host"
)


#: Below this many columns the wide cells (times, memory, pids) fold onto two
#: lines, so that the commands keep room to be read.
WIDE = 120


def machine_view(status: MachineStatus, width: int, notes: Sequence[str] = ()) -> RenderableType:
    """Everything ``gpupool status`` prints, laid out for ``width`` columns; ``notes`` go under it."""
    names = gpu_names(status)
    narrow = width < WIDE
    parts: list[RenderableType] = [Text(_headline(status), style="bold")]
    if status.gpus:
        parts.append(_gpu_table(status, narrow))
    else:
        parts.append(Text("No GPUs visible to this process."))
    if status.holders:
        parts.append(_holder_table(status, names, narrow))
    if status.waiters:
        parts.append(_queue_table(status, names, narrow))
    others = [(gpu, p) for gpu in status.gpus for p in gpu.other_processes]
    if others:
        parts.append(_other_table(others))
    # Where the numbers come from on one line, then what the reader may need explained.
    footer = ["; ".join([*notes, f"ledger {status.ledger}"])]
    same_namespace = [h.same_pid_namespace for h in status.holders]
    same_namespace += [w.same_pid_namespace for w in status.waiters]
    if not all(same_namespace):
        footer.append(OTHER_NAMESPACE_NOTE)
    if any(h.kind == "reservation" for h in status.holders):
        footer.append("end a reservation with `gpupool release ID`")
    parts.append(Text("\n".join(footer), style="dim"))
    return Group(*parts)


def gpu_names(status: MachineStatus) -> dict[str, str]:
    """``uuid -> "3"``, the index this view shows each GPU under."""
    return {gpu.uuid: str(gpu.index) for gpu in status.gpus}


def _gpus_text(uuids: Sequence[str], names: dict[str, str]) -> str:
    """``"0,1"``; GPUs this process does not see (CUDA_VISIBLE_DEVICES) are counted,
    ``"3 +1 hidden"``: their UUIDs are in ``--json``."""
    shown = ",".join(names[uuid] for uuid in uuids if uuid in names)
    hidden = sum(1 for uuid in uuids if uuid not in names)
    if hidden:
        shown = f"{shown} +{hidden} hidden".strip()
    return shown or "-"


def _headline(status: MachineStatus) -> str:
    busy = sum(1 for gpu in status.gpus if gpu.holders)
    return (
        f"Machine status at {clock(status.taken_at, status.taken_at)}: "
        f"{len(status.gpus)} GPU(s), {busy} held through gpupool, "
        f"{len(status.waiters)} request(s) waiting"
    )


# ---------------------------------------------------------------- GPUs


def _gpu_table(status: MachineStatus, narrow: bool) -> Table:
    # One model everywhere (the usual box): named once in the title, not on every row.
    models = {gpu.name for gpu in status.gpus}
    title = f"GPUs: {len(status.gpus)} x {next(iter(models))}" if len(models) == 1 else "GPUs"
    table = Table(title=title, title_justify="left")
    table.add_column("GPU", justify="right", no_wrap=True)
    if len(models) > 1:
        table.add_column("Name", max_width=16 if narrow else None)
    table.add_column("MiB used / total", justify="right")
    table.add_column("Util", justify="right", no_wrap=True)
    table.add_column("Used by")
    for gpu in status.gpus:
        percent = (
            round(100 * gpu.memory_used_mb / gpu.memory_total_mb) if gpu.memory_total_mb else 0
        )
        memory = Text(f"{gpu.memory_used_mb:,} / {gpu.memory_total_mb:,} ({percent}%)")
        if gpu.memory_reserved_mb:
            memory.append(f"\n{gpu.memory_reserved_mb:,} reserved", style="dim")
        util = "n/a" if gpu.utilization_pct is None else f"{gpu.utilization_pct:.0f}%"
        name = [gpu.name] if len(models) > 1 else []
        table.add_row(str(gpu.index), *name, memory, util, _used_by(gpu, status.taken_at, narrow))
    return table


def _used_by(gpu: MachineGPU, now: float, narrow: bool) -> Text:
    """One line per holder, then a line for the rest, or "free"."""
    lines: list[Text] = []
    if not gpu.healthy:
        lines.append(Text(f"UNHEALTHY: {gpu.health_detail or 'unknown'}", style="bold red"))
    for holder in gpu.holders:
        line = Text()
        line.append(holder.user, style="bold")
        line.append(f" pid {pid_text(holder.pid, holder.same_pid_namespace)}, ")
        line.append("exclusive" if holder.exclusive else f"{holder.memory_mb:,} MiB shared")
        line.append(
            f", {duration(now - holder.since)} ago" if narrow else f", {ago(holder.since, now)}"
        )
        if holder.kind == "reservation":
            line.append(f", reservation #{holder.id}", style="cyan")
        if holder.orphaned:
            line.append(", ORPHANED", style="bold yellow")
        lines.append(line)
    alive = [p for p in gpu.other_processes if p.alive]
    gone = [p for p in gpu.other_processes if not p.alive]
    if alive:
        lines.append(Text(f"not managed by gpupool: {_summary(alive)}", style="magenta"))
    if gone:
        pids = ", ".join(str(p.pid) for p in gone)
        lines.append(
            Text(f"GONE (pid {pids}): {_memory_sum(gone)} still counted", style="bold red")
        )
    if not lines:
        lines.append(Text("free", style="green"))
    return Text("\n").join(lines)


def _summary(processes: Sequence[OtherProcess]) -> str:
    if len(processes) == 1:
        (process,) = processes
        return f"{process.name or 'pid'} {process.pid}, {mib(process.memory_mb)}"
    return f"{len(processes)} processes, {_memory_sum(processes)}"


def _memory_sum(processes: Sequence[OtherProcess]) -> str:
    known = [p.memory_mb for p in processes if p.memory_mb is not None]
    if not known:
        return "? MiB"
    more = "+" if len(known) < len(processes) else ""
    return f"{sum(known):,}{more} MiB"


# ---------------------------------------------------------------- holders


def _holder_table(status: MachineStatus, names: dict[str, str], narrow: bool) -> Table:
    fold = 11 if narrow else None
    table = Table(title="Holders (through gpupool), oldest first", title_justify="left")
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("User", max_width=fold)
    table.add_column("PID", justify="right", max_width=fold)
    table.add_column("GPU", max_width=fold)
    table.add_column("Holds", max_width=fold)
    table.add_column("Since", max_width=fold)
    table.add_column("Command, key")
    for holder in status.holders:
        holds = "exclusive" if holder.exclusive else f"{holder.memory_mb:,} MiB shared"
        table.add_row(
            str(holder.id),
            holder.user,
            pid_text(holder.pid, holder.same_pid_namespace),
            _gpus_text(holder.gpu_uuids, names),
            holds,
            ago(holder.since, status.taken_at),
            _holder_what(holder, status.taken_at),
        )
    return table


def _holder_what(holder: LedgerHolder, now: float) -> Text:
    text = Text()
    if holder.kind == "reservation":
        text.append("reservation", style="cyan")  # its id is in the first column
        if holder.until is not None:
            if holder.until >= now:
                ends = f"ends in {duration(holder.until - now)}"
            else:
                ends = f"ended {duration(now - holder.until)} ago"
            text.append(f", {ends} ({clock(holder.until, now)})", style="cyan")
        text.append("\n")
    if holder.orphaned:
        jobs = ", ".join(map(str, holder.job_pids)) or "?"
        text.append(
            f"ORPHANED: holder gone, its jobs (pid {jobs}) still run\n",
            style="bold yellow",
        )
    text.append(short_command(holder.command))
    if holder.key is not None:
        text.append(f"\nkey {holder.key}", style="dim")
    return text


# ---------------------------------------------------------------- queue


def _queue_table(status: MachineStatus, names: dict[str, str], narrow: bool) -> Table:
    fold = 11 if narrow else None
    table = Table(title="Waiting (machine-wide queue, in order of service)", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("User", max_width=fold)
    table.add_column("PID", justify="right", max_width=fold)
    table.add_column("Wants", max_width=18 if narrow else None)
    table.add_column("Prio", justify="right", no_wrap=True)
    table.add_column("Waiting", max_width=fold)
    table.add_column("Command, key")
    every_gpu = {gpu.uuid for gpu in status.gpus}
    for position, waiter in enumerate(status.waiters, 1):
        what = Text(short_command(waiter.command))
        if waiter.key is not None:
            what.append(f"\nkey {waiter.key}", style="dim")
        table.add_row(
            str(position),
            waiter.user,
            pid_text(waiter.pid, waiter.same_pid_namespace),
            _wants(waiter, names, every_gpu),
            str(waiter.priority),
            ago(waiter.since, status.taken_at),
            what,
        )
    return table


def _wants(waiter: LedgerWaiter, names: dict[str, str], every_gpu: set[str]) -> str:
    count = f"{waiter.required_gpus} GPU{'s' if waiter.required_gpus != 1 else ''}"
    if waiter.exclusive:
        words = [count, "exclusive"]
        if waiter.min_memory_mb:
            words.append(f">= {waiter.min_memory_mb:,} MiB free")
    else:
        words = [count, f"{waiter.min_memory_mb:,} MiB shared"]
    if waiter.gpu_uuids and set(waiter.gpu_uuids) != every_gpu:
        words.append(f"of GPU {_gpus_text(waiter.gpu_uuids, names)}")
    return ", ".join(words)


# ---------------------------------------------------------------- other processes


def _other_table(others: Sequence[tuple[MachineGPU, OtherProcess]]) -> Table:
    table = Table(title="Not managed by gpupool", title_justify="left")
    table.add_column("GPU", justify="right", no_wrap=True)
    table.add_column("PID", justify="right", no_wrap=True)
    table.add_column("Process")
    table.add_column("Memory", justify="right", no_wrap=True)
    for gpu, process in others:
        if process.alive:
            name = Text(process.name or "?")
        else:
            name = Text("GONE: no such process; the driver still counts its memory", "bold red")
        table.add_row(str(gpu.index), str(process.pid), name, mib(process.memory_mb))
    return table
