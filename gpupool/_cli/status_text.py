"""The words ``gpupool status`` prints: durations, clock times, commands, pids.

Pure functions of values (time is an argument, never read here), so that the
tables and their tests agree on every string.
"""

from __future__ import annotations

import os
import time

__all__ = ["ago", "clock", "duration", "mib", "pid_text", "short_command"]

#: Characters of a holder's or waiter's command shown in the tables (the JSON has it whole).
COMMAND_CHARS = 60

#: Interpreters whose first argument (the script) is what tells jobs apart.
_INTERPRETERS = ("python", "pypy", "bash", "sh", "zsh", "node", "perl", "ruby", "Rscript", "julia")


def duration(seconds: float) -> str:
    """``"45s"``, ``"12m"``, ``"2h 3m"``, ``"3d 4h"``: two units at most, never negative.

    Minutes drop their seconds: "since 12 minutes" is what a reader wants from
    a holder, and a display refreshed every second should not flicker.
    """
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def clock(moment: float, now: float) -> str:
    """Local clock time of ``moment``: ``"13:51:07"`` on the day of ``now``, else with the date."""
    local = time.localtime(moment)
    if local[:3] == time.localtime(now)[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def ago(moment: float, now: float) -> str:
    """``"12m ago (13:51:07)"``: how long ago, then when."""
    return f"{duration(now - moment)} ago ({clock(moment, now)})"


def mib(value: int | None) -> str:
    """``"8,000 MiB"``, or ``"? MiB"`` where the driver cannot say."""
    return "? MiB" if value is None else f"{value:,} MiB"


def pid_text(pid: int, same_pid_namespace: bool) -> str:
    """The pid, marked when it is a pid of another PID namespace (not one of this host)."""
    return str(pid) if same_pid_namespace else f"{pid} (other pid ns)"


def short_command(command: str, limit: int = COMMAND_CHARS) -> str:
    """A command line as a reader tells jobs apart: program names without their
    directories, then at most ``limit`` characters (``…`` where cut).

    ``/usr/bin/python3 /home/a/sweep/train.py --lr 0.1`` -> ``python3 train.py --lr 0.1``.
    """
    words = command.split()
    if not words:
        return "?"
    words[0] = os.path.basename(words[0]) or words[0]
    script = words[1] if len(words) > 1 else ""
    if words[0].startswith(_INTERPRETERS) and "/" in script and not script.startswith("-"):
        words[1] = os.path.basename(script) or script
    text = " ".join(words)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text
