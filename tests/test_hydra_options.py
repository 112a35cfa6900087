"""The Hydra launcher's settings and job keys (gpupool/integrations/hydra/options.py,
keys.py): pure checks, no Hydra run."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool import Resources
from gpupool.integrations.hydra.keys import job_key
from gpupool.integrations.hydra.options import LauncherOptions


def test_the_defaults_ask_for_one_exclusive_gpu_per_job() -> None:
    options = LauncherOptions.from_config({"_target_": "x"})

    assert options.resources == Resources(1)
    assert options.max_parallel is None
    assert options.timeout is None
    assert options.retry_failed is True
    assert options.ledger is None


@pytest.mark.parametrize(
    ("mem", "mb"), [("8G", 8192), ("8000M", 8000), ("8000", 8000), (8000, 8000), ("1.5G", 1536)]
)
def test_mem_takes_sizes_as_the_jobs_file_does(mem: object, mb: int) -> None:
    assert LauncherOptions.from_config({"mem": mem}).resources.min_memory_mb == mb


@pytest.mark.parametrize(("timeout", "seconds"), [("2h", 7200.0), ("1h30m", 5400.0), (90, 90.0)])
def test_timeout_takes_seconds_or_durations(timeout: object, seconds: float) -> None:
    assert LauncherOptions.from_config({"timeout": timeout}).timeout == seconds


def test_the_request_is_made_of_the_settings() -> None:
    options = LauncherOptions.from_config(
        {"gpus_per_job": 2, "mem": "20G", "exclusive": False, "priority": 3}
    )

    assert options.resources == Resources(2, min_memory_mb=20480, exclusive=False, priority=3)


@pytest.mark.parametrize(
    ("settings", "error", "words"),
    [
        ({"mem": "lots"}, ValueError, "hydra.launcher.mem must look like 8G"),
        ({"mem": -1}, ValueError, "hydra.launcher.mem"),
        ({"gpus_per_job": "2"}, TypeError, "hydra.launcher.gpus_per_job"),
        ({"timeout": "soon"}, ValueError, "hydra.launcher.timeout must be a duration"),
        ({"timeout": 0}, ValueError, "hydra.launcher.timeout"),
        ({"max_parallel": 0}, ValueError, "hydra.launcher.max_parallel"),
        ({"retries": -1}, ValueError, "hydra.launcher.retries"),
        ({"fake_gpus": 0}, ValueError, "hydra.launcher.fake_gpus"),
        ({"ledger": True}, ValueError, "hydra.launcher.ledger must be null"),
        ({"journal": 3}, TypeError, "hydra.launcher.journal must be a path"),
        ({"gpu_per_job": 1}, TypeError, "unknown setting hydra.launcher.gpu_per_job"),
        ({"exclusive": False}, ValueError, "exclusive=False needs min_memory_mb > 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(
    settings: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        LauncherOptions.from_config(settings)


def test_job_keys_depend_on_the_app_and_the_overrides_only() -> None:
    key = job_key("train", ["lr=0.1", "seed=1"])

    assert key.startswith("train:")
    assert key == job_key("train", ("lr=0.1", "seed=1"))
    assert key != job_key("train", ["lr=0.1", "seed=2"])
    assert key != job_key("eval", ["lr=0.1", "seed=1"])
    # Order is kept: Hydra applies overrides in order.
    assert key != job_key("train", ["seed=1", "lr=0.1"])
    # A list is not its joined string: ["a=1 b=2"] is one override.
    assert job_key("train", ["a=1 b=2"]) != job_key("train", ["a=1", "b=2"])
