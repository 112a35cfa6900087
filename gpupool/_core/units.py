"""Sizes and durations as people write them: ``8G``, ``512M``, ``90s``, ``1h30m``.

One reading for every place that takes them (the jobs file, the command
line, the Hydra launcher's config, the ``mem=`` of the pytest plugin's
``@pytest.mark.gpus``), so ``mem=8G`` means the same number of
MB wherever it is written. Pure functions of text.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration", "parse_memory_mb"]


def parse_memory_mb(text: str, *, name: str = "memory") -> int:
    """``"8G"``, ``"8GiB"``, ``"512M"``, ``"1.5G"`` or ``"8000"`` (MB) as MB.

    Units are binary, as NVML reports them: 1G = 1024 MB. ``name`` is what
    the message calls the value.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{name} must look like 8G, 512M or 8000 (MB), got {text!r}")
    number = float(match.group(1))
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2).upper()]
    return math.ceil(number * scale)


def parse_duration(text: str, *, name: str = "timeout") -> float:
    """``"90"`` or ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"1.5h"`` as seconds > 0.

    ``name`` is the key the messages name (``timeout``, ``est``).
    """
    cleaned = text.strip().lower()
    pieces = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", cleaned)
    allowed = "a duration like 90, 90s, 30m, 2h or 1h30m"
    if not pieces or "".join(n + u for n, u in pieces) != cleaned:
        raise ValueError(f"{name} must be {allowed}, got {text!r}")
    if len(pieces) > 1 and any(unit == "" for _, unit in pieces):
        raise ValueError(f"{name} must be {allowed} (every part with a unit), got {text!r}")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in pieces)
    if seconds <= 0:
        raise ValueError(f"{name} must be > 0, got {text!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be {allowed}, got {text!r} (too long)")
    return seconds
