"""The launcher's config node: ``hydra/launcher=gpupool`` and its settings.

docs/hydra.md describes each setting; gpupool/integrations/hydra/options.py
checks them (and holds the same defaults). Settings that take a size or a
duration are typed ``Any`` so that ``mem=8G`` and ``mem=8000`` both reach
the check as written.
"""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module
# before it is in sys.modules, where dataclasses look up string annotations.
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

__all__ = ["GPUPoolLauncherConf"]


@dataclass
class GPUPoolLauncherConf:
    _target_: str = "hydra_plugins.gpupool_launcher.gpupool_launcher.GPUPoolLauncher"
    #: Whole GPUs per job; 0 runs jobs on the CPU.
    gpus_per_job: int = 1
    #: Free memory each of a job's GPUs must have: 8G, 8000M or an int of MB.
    mem: Any = 0
    #: false shares GPUs between jobs by memory (needs mem > 0).
    exclusive: bool = True
    #: Jobs running at once; null: as many as the GPUs allow.
    max_parallel: int | None = None
    #: Extra attempts for a job that failed or timed out.
    retries: int = 0
    #: Time limit of each attempt: seconds, or 90s, 30m, 2h, 1h30m; null: none.
    timeout: Any = None
    #: Higher goes first among jobs waiting for GPUs (machine-wide, with the ledger).
    priority: int = 0
    #: The journal; null: gpupool.journal.sqlite in the sweep directory.
    journal: str | None = None
    #: Run again the jobs that failed in an earlier run of the sweep.
    retry_failed: bool = True
    #: Seconds between SIGTERM and SIGKILL when a job is stopped.
    grace_period: float = 5.0
    #: Pretend there are this many GPUs (no NVML needed): for trying out and tests.
    fake_gpus: int | None = None
    #: The machine-wide ledger: null, the default (the machine's on real GPUs, none
    #: on fake ones); false, none; or a directory.
    ledger: Any = None


ConfigStore.instance().store(
    group="hydra/launcher", name="gpupool", node=GPUPoolLauncherConf, provider="gpupool"
)
