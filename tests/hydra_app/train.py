"""A tiny Hydra app for tests/test_hydra_launcher.py (and the example of docs/hydra.md).

Each job appends one JSON line to ``cfg.record``: its learning rate, pid,
``CUDA_VISIBLE_DEVICES``, start and end times and output directory. The job
with ``lr == fail_at_lr`` raises, the one with ``lr == exit_at_lr`` ends its
process at once (no result); every other one returns a dict
(``returns=set``: one with no JSON form; ``returns=lock``: one that cannot be pickled).

    python tests/hydra_app/train.py -m hydra/launcher=gpupool \\
        hydra.launcher.fake_gpus=2 lr=0.1,0.01,0.5
"""

from __future__ import annotations

import json
import os
import threading
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


class DivergedError(ValueError):
    """What the failing job raises."""


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def train(cfg: DictConfig) -> dict[str, object]:
    started = time.time()
    if cfg.pid_dir is not None:
        with open(os.path.join(cfg.pid_dir, f"{cfg.lr}.pid"), "w", encoding="utf-8") as file:
            file.write(str(os.getpid()))
    time.sleep(float(cfg.work_s))
    record = {
        "lr": cfg.lr,
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start": started,
        "end": time.time(),
        "output_dir": HydraConfig.get().runtime.output_dir,
    }
    with open(cfg.record, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")
    if cfg.exit_at_lr is not None and str(cfg.lr) == str(cfg.exit_at_lr):
        print(f"dying at lr={cfg.lr}", flush=True)
        os._exit(7)
    if str(cfg.lr) == str(cfg.fail_at_lr):
        raise DivergedError(f"loss diverged at lr={cfg.lr}")
    if cfg.returns == "set":
        return {"lr": cfg.lr, "tags": {"a", "b"}}
    if cfg.returns == "lock":
        return {"lr": cfg.lr, "lock": threading.Lock()}
    return {"lr": cfg.lr, "loss": 1.0 - cfg.lr}


if __name__ == "__main__":
    train()
