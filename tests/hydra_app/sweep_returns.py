"""Run tests/hydra_app's sweep in process and print the JobReturns as JSON lines.

``python tests/hydra_app/sweep_returns.py SWEEP_DIR OVERRIDE...`` runs Hydra's
multirun as ``@hydra.main`` would (through the same ``Hydra.multirun``, with
Hydra's own test helper), but keeps what the launcher returned, which
``@hydra.main`` throws away, so that tests/test_hydra_launcher.py can compare
the gpupool launcher's JobReturns with the basic launcher's.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from hydra.test_utils.test_utils import SweepTaskFunction
from omegaconf import OmegaConf


def main(sweep_dir: str, overrides: list[str]) -> None:
    # train.py beside this script (sys.path[0]): a module of the user's, which the jobs'
    # processes must import by name too. By name here as well, so that deptry does not
    # take it for a package that pyproject.toml should declare.
    train = importlib.import_module("train").train
    sweep = SweepTaskFunction()
    sweep.calling_file = str(Path(__file__).resolve())
    sweep.calling_module = None
    sweep.config_path = "conf"
    sweep.config_name = "config"
    sweep.task_function = train.__wrapped__
    sweep.overrides = overrides
    sweep.temp_dir = sweep_dir
    sweep.__enter__()  # not __exit__: that removes the sweep directory
    assert sweep.returns is not None
    for batch in sweep.returns:
        for job_return in batch:
            hydra_cfg = OmegaConf.to_container(job_return.hydra_cfg.hydra, resolve=True)
            print(
                json.dumps(
                    {
                        "status": job_return.status.name,
                        "return_value": job_return.return_value,
                        "overrides": list(job_return.overrides),
                        "cfg": OmegaConf.to_container(job_return.cfg, resolve=True),
                        "job_num": hydra_cfg["job"]["num"],
                        "output_dir": hydra_cfg["runtime"]["output_dir"],
                        "working_dir": job_return.working_dir,
                        "task_name": job_return.task_name,
                    },
                    sort_keys=True,
                )
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
