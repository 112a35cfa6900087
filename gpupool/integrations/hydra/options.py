"""The launcher's settings (``hydra.launcher.*``), read and checked once.

Hydra hands a launcher its config as keyword arguments of whatever types the
YAML or the command line gave (``mem=8G`` is a str, ``mem=8000`` an int,
``timeout=2h`` a str). `LauncherOptions.from_config` turns them into one
checked value before anything runs, with the usual rule of the library: a
wrong type is a ``TypeError``, a wrong value a ``ValueError``, and the message
names the setting as the user writes it (``hydra.launcher.mem``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, final

import attrs

from ..._core.checks import check_bool, check_finite_seconds, check_int, shown
from ..._core.request import Resources
from ..._core.units import parse_duration, parse_memory_mb

__all__ = ["LauncherOptions"]

_PREFIX = "hydra.launcher."

#: Every setting, with its default; the Hydra config dataclass mirrors this.
DEFAULTS: dict[str, Any] = {
    "gpus_per_job": 1,
    "mem": 0,
    "exclusive": True,
    "max_parallel": None,
    "retries": 0,
    "timeout": None,
    "priority": 0,
    "journal": None,
    "retry_failed": True,
    "grace_period": 5.0,
    "fake_gpus": None,
    "ledger": None,
}


@final
@attrs.frozen
class LauncherOptions:
    """What ``hydra.launcher.*`` asked for, checked."""

    #: What each job asks of the pool.
    resources: Resources
    #: Jobs running at once (``None``: as many as the GPUs allow).
    max_parallel: int | None = None
    retries: int = 0
    #: Seconds per attempt (``None``: no limit).
    timeout: float | None = None
    #: The journal's path (``None``: ``<sweep dir>/gpupool.journal.sqlite``).
    journal: str | None = None
    retry_failed: bool = True
    #: Seconds between SIGTERM and SIGKILL when a job is stopped.
    grace_period: float = 5.0
    #: Pretend there are this many GPUs (``None``: the real ones, through NVML).
    fake_gpus: int | None = None
    #: The ledger's directory; ``None``: the default (the machine's for real GPUs,
    #: none for fake ones); ``False``: none.
    ledger: str | bool | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LauncherOptions:
        """Check the launcher's settings; unknown names are refused (``TypeError``)."""
        unknown = sorted(set(config) - set(DEFAULTS) - {"_target_"})
        if unknown:
            raise TypeError(
                f"unknown setting {_PREFIX}{unknown[0]}; the gpupool launcher takes "
                + ", ".join(sorted(DEFAULTS))
            )
        values = {**DEFAULTS, **{k: v for k, v in config.items() if k != "_target_"}}
        resources = Resources(
            required_gpus=check_int(_PREFIX + "gpus_per_job", values["gpus_per_job"], 0),
            min_memory_mb=_memory_mb(values["mem"]),
            exclusive=check_bool(_PREFIX + "exclusive", values["exclusive"]),
            priority=check_int(_PREFIX + "priority", values["priority"]),
        )
        max_parallel = values["max_parallel"]
        fake_gpus = values["fake_gpus"]
        return cls(
            resources=resources,
            max_parallel=None
            if max_parallel is None
            else check_int(_PREFIX + "max_parallel", max_parallel, 1),
            retries=check_int(_PREFIX + "retries", values["retries"], 0),
            timeout=_timeout(values["timeout"]),
            journal=_optional_path("journal", values["journal"]),
            retry_failed=check_bool(_PREFIX + "retry_failed", values["retry_failed"]),
            grace_period=check_finite_seconds(_PREFIX + "grace_period", values["grace_period"]),
            fake_gpus=None if fake_gpus is None else check_int(_PREFIX + "fake_gpus", fake_gpus, 1),
            ledger=_ledger(values["ledger"]),
        )


def _memory_mb(value: object) -> int:
    """``8G``, ``8000M``, ``"8000"`` or an int of MB."""
    name = _PREFIX + "mem"
    if isinstance(value, str):
        return parse_memory_mb(value, name=name)
    return check_int(name, value, 0)


def _timeout(value: object) -> float | None:
    """``None``, seconds (a number > 0) or a duration such as ``2h`` or ``1h30m``."""
    name = _PREFIX + "timeout"
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value, name=name)
    return check_finite_seconds(name, value, allow_zero=False)


def _optional_path(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise TypeError(f"{_PREFIX}{key} must be a path or null, got {shown(value)}")
    return str(os.fspath(value))


def _ledger(value: object) -> str | bool | None:
    """``None`` (the default ledger), ``False`` (none) or a directory."""
    if value is None or value is False:
        return value
    if value is True:
        raise ValueError(
            f"{_PREFIX}ledger must be null (the default), false (none) or a directory, got true"
        )
    path = _optional_path("ledger", value)
    assert path is not None
    return path
