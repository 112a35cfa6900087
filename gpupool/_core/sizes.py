"""Memory sizes as people write them (``8G``, ``512M``), in the MB that NVML counts.

One parser for every place that takes a size from a person: the jobs file and
``--mem`` of the command line, and the ``mem=`` of the pytest plugin's
``@pytest.mark.gpus`` marker.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_memory_mb"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_SCALE = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory_mb(text: str) -> int:
    """``"8G"``, ``"8GiB"``, ``"512M"``, ``"1.5G"`` or ``"8000"`` (MB) as MB.

    Units are binary, as NVML reports them: 1G = 1024 MB.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"memory must look like 8G, 512M or 8000 (MB), got {text!r}")
    return math.ceil(float(match.group(1)) * _SCALE[match.group(2).upper()])
