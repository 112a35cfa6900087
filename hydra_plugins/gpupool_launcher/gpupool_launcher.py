"""The launcher class Hydra instantiates for ``hydra/launcher=gpupool``.

Thin on purpose: Hydra imports this module for every app it starts, to find
its plugins, so it imports Hydra alone; the work is done by
``gpupool.integrations.hydra.launch``, imported when a sweep is launched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

__all__ = ["GPUPoolLauncher"]


class GPUPoolLauncher(Launcher):
    """Runs each job of a multirun in its own process with its own GPUs (docs/hydra.md)."""

    def __init__(self, **settings: Any) -> None:
        # Hydra passes the config node's fields; containers arrive as OmegaConf nodes.
        self.settings = {
            name: OmegaConf.to_container(value, resolve=True)
            if OmegaConf.is_config(value)
            else value
            for name, value in settings.items()
        }
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        if self.config is None or self.hydra_context is None or self.task_function is None:
            raise RuntimeError("GPUPoolLauncher.launch() called before setup()")
        from gpupool.integrations.hydra.launch import launch

        return launch(
            self.settings,
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=self.config,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
        )
