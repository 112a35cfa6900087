"""gpupool._core.checks: the one home of the argument rule (attrs'): a wrong type is a
TypeError, a wrong value a ValueError, and the message names the argument, the value
given and what is allowed. Also the places that used to hand-roll it."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from gpupool import GPUStats, Journal
from gpupool._core.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_instance,
    check_str,
    int_validator,
    is_int,
    is_number,
    number_validator,
)
from gpupool.sim import Job


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: check_bool("flag", 1), TypeError, "flag must be True or False, got 1"),
        (
            lambda: check_bool("flag", "yes", allowed="a bool"),
            TypeError,
            "flag must be a bool, got 'yes'",
        ),
        (lambda: check_str("label", b"x"), TypeError, "label must be a str, got b'x'"),
        (lambda: check_callable("hook", 3), TypeError, "hook must be callable, got 3"),
        (
            lambda: check_instance("when", "now", float, "a float"),
            TypeError,
            "when must be a float, got 'now'",
        ),
        (lambda: check_choice("mode", 1, ("a", "b")), TypeError, "mode must be 'a' or 'b', got 1"),
        (
            lambda: check_choice("mode", "c", ("a", "b", "d")),
            ValueError,
            "mode must be one of 'a', 'b', 'd', got 'c'",
        ),
    ],
)
def test_the_checks_follow_the_rule(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_the_checks_return_what_they_accept() -> None:
    assert check_bool("flag", False) is False
    assert check_str("label", "x") == "x"
    assert check_callable("hook", print) is print
    assert check_choice("mode", "a", ("a", "b")) == "a"
    assert [is_int(v) for v in (1, True, 1.0)] == [True, False, False]
    assert [is_number(v) for v in (1, 1.5, math.inf, False, "1")] == [
        True,
        True,
        True,
        False,
        False,
    ]


@attrs.frozen
class _Fields:
    count: int = attrs.field(validator=int_validator(minimum=1))
    share: float | None = attrs.field(
        default=None, validator=number_validator(minimum=0, maximum=1, optional=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"count": 0}, ValueError, "count must be an int >= 1, got 0"),
        ({"count": True}, TypeError, "count must be an int >= 1, got True"),
        ({"count": 1, "share": 2}, ValueError, "share must be None or a finite number in [0, 1]"),
        ({"count": 1, "share": "x"}, TypeError, "share must be None or a finite number in [0, 1]"),
        ({"count": 1, "share": math.nan}, ValueError, "share must be None or a finite number"),
    ],
)
def test_the_attrs_validators_name_the_field(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        _Fields(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)
    assert _Fields(count=2, share=None) == _Fields(2)


def _stats(**changes: object) -> GPUStats:
    fields: dict[str, Any] = {
        "index": 0,
        "uuid": "GPU-0",
        "name": "x",
        "memory_total_mb": 100,
        "memory_used_mb": 0,
        "utilization_pct": None,
    }
    return GPUStats(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        # Regression: a wrong type was a ValueError.
        ({"index": "0"}, TypeError, "index must be an int >= 0, got '0'"),
        ({"memory_used_mb": 1.5}, TypeError, "memory_used_mb must be an int >= 0, got 1.5"),
        ({"utilization_pct": "50"}, TypeError, "utilization_pct must be None or a finite number"),
        ({"memory_total_mb": -1}, ValueError, "memory_total_mb must be an int >= 0, got -1"),
        ({"utilization_pct": 101}, ValueError, "utilization_pct must be None or a finite number"),
        ({"utilization_pct": math.nan}, ValueError, "utilization_pct must be None or a finite"),
    ],
)
def test_gpu_stats_refuse_wrong_types_with_type_error(
    changes: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("[", r"\[")):
        _stats(**changes)


def test_sim_jobs_refuse_wrong_types_with_type_error() -> None:
    """Regression: Job(arrival="0") and Job(gpus=1.0) were ValueErrors."""
    with pytest.raises(TypeError, match="arrival must be a finite number >= 0, got '0'"):
        Job(arrival="0", duration=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"gpus must be an int >= 1, got 1\.0"):
        Job(arrival=0, duration=1, gpus=1.0)  # type: ignore[arg-type]


def test_journal_arguments_follow_the_rule(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="synchronous must be 'normal' or 'full', got 2"):
        Journal(tmp_path / "j.sqlite", synchronous=2)  # type: ignore[arg-type]
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.claim("k")
        with pytest.raises(TypeError, match="pgid must be an int >= 1, got '7'"):
            journal.record_process_group("k", "7")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="pgid must be an int >= 1, got 0"):
            journal.record_process_group("k", 0)
