"""The GPU lease options of the pytest plugin, as one value (checked in ``plugin.py``).

Apart from ``leases.py`` so that pytest's configure step, which runs in every
session, need not import the lease machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import final

import attrs

__all__ = ["LeaseSettings"]


@final
@attrs.frozen
class LeaseSettings:
    """The plugin's options (command line over ini), checked once per session."""

    #: GPUs for a test with no ``gpus`` marker (``--gpus-per-test``); 0: none.
    per_test: int = 0
    #: Seconds a test waits for its GPUs before it fails (``--gpus-timeout``).
    timeout: float = 300.0
    #: What a test that asks for more GPUs (or memory) than the machine has does:
    #: "skip" or "fail" (``--gpus-too-many``).
    too_many: str = "skip"
    #: Fake GPUs instead of the machine's (``--gpus-fake N``), or None.
    fake_count: int | None = None
    #: The ledger directory (``--gpus-ledger``); None: the machine's default.
    ledger: Path | None = None
