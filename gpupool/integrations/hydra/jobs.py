"""A Hydra job as the launcher prepares it, before any process starts.

Each job's config is composed in the launcher's process, as Hydra's basic
launcher does (``load_sweep_config`` with ``hydra.job.id`` and
``hydra.job.num`` set), so that the launcher knows, before the job runs,
where its output goes and what its ``JobReturn`` holds if its process never
reports (it was killed, it timed out, it finished in an earlier run).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast, final

import attrs
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import filter_overrides
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .keys import job_key

__all__ = ["HydraJob", "prepare_jobs"]


@final
@attrs.frozen(eq=False)
class HydraJob:
    """One job of a sweep: what it is, where it writes, what Hydra will be told."""

    #: Its index in the sweep (``hydra.job.num``).
    num: int
    overrides: tuple[str, ...]
    #: Its journal key (keys.py), also its ``hydra.job.id``.
    key: str
    #: The job's config as ``run_job`` takes it (``hydra`` node included).
    sweep_config: DictConfig
    #: What ``JobReturn.cfg`` and ``.hydra_cfg`` hold for this job.
    task_cfg: DictConfig
    hydra_cfg: DictConfig
    task_name: str
    output_dir: Path

    @property
    def label(self) -> str:
        """``#3 : lr=0.1 seed=1``, as Hydra's launchers list their jobs."""
        return f"#{self.num} : {' '.join(filter_overrides(self.overrides))}"

    def describe(self) -> dict[str, Any]:
        """The job as the journal shows it (``gpupool journal show``)."""
        return {
            "key": self.key,
            "num": self.num,
            "overrides": list(self.overrides),
            "output_dir": str(self.output_dir),
        }


def prepare_jobs(
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> list[HydraJob]:
    """Compose every job's config; Hydra's config singleton is left as it was."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        return [
            _prepare(hydra_context, config, list(overrides), initial_job_idx + index)
            for index, overrides in enumerate(job_overrides)
        ]
    finally:
        hydra_config.cfg = before


def _prepare(
    hydra_context: HydraContext, config: DictConfig, overrides: list[str], num: int
) -> HydraJob:
    sweep_config = hydra_context.config_loader.load_sweep_config(config, overrides)
    job_name = str(sweep_config.hydra.job.name)
    key = job_key(job_name, overrides)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = key
        sweep_config.hydra.job.num = num
    # The sweep's directories may interpolate the hydra resolver (${hydra:job.num}),
    # which reads the config singleton: set it, as run_job does before it reads them.
    HydraConfig.instance().set_config(sweep_config)
    output_dir = Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))) / str(
        OmegaConf.select(sweep_config, "hydra.sweep.subdir")
    )
    # The configs that run_job puts in the JobReturn, made the same way from a copy
    # (the job's own process gets the config as loaded, as run_job expects it).
    resolved = copy.deepcopy(sweep_config)
    with read_write(resolved.hydra.runtime), open_dict(resolved.hydra.runtime):
        resolved.hydra.runtime.output_dir = os.path.abspath(output_dir)
    HydraConfig.instance().set_config(resolved)
    # Typed HydraConf by Hydra, but a DictConfig holding the hydra node, as in JobReturn.
    hydra_cfg = cast(DictConfig, copy.deepcopy(HydraConfig.instance().cfg))
    task_cfg = copy.deepcopy(resolved)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return HydraJob(
        num=num,
        overrides=tuple(overrides),
        key=key,
        sweep_config=sweep_config,
        task_cfg=task_cfg,
        hydra_cfg=hydra_cfg,
        task_name=job_name,
        output_dir=output_dir,
    )
