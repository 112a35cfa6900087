"""The retry policy and backoff: pure functions, table-tested."""

from __future__ import annotations

import pytest

from gpupool import PoolClosed, UnsatisfiableRequest
from gpupool._runner.retry import backoff_delay, check_retry_on, should_retry


@pytest.mark.parametrize(
    ("retry", "jitter", "expected"),
    [(1, 0.0, 2.0), (2, 0.0, 4.0), (3, 0.0, 8.0), (3, 1.0, 4.0), (6, 0.0, 60.0), (500, 0.0, 60.0)],
)
def test_backoff_doubles_up_to_the_cap_and_jitter_shortens_it(
    retry: int, jitter: float, expected: float
) -> None:
    assert backoff_delay(retry, initial=2.0, jitter=jitter) == expected


def test_backoff_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="retry must be an int >= 1, got 0"):
        backoff_delay(0, initial=1.0)
    with pytest.raises(ValueError, match=r"jitter must be in \[0, 1\], got 2"):
        backoff_delay(1, initial=1.0, jitter=2)


@pytest.mark.parametrize(
    ("retry_on", "error", "expected"),
    [
        (Exception, ValueError(), True),
        (ValueError, KeyError(), False),
        ((KeyError, ValueError), KeyError(), True),
        (lambda e: "cuda" in str(e), RuntimeError("cuda oom"), True),
        (lambda e: "cuda" in str(e), RuntimeError("nan"), False),
        (Exception, UnsatisfiableRequest("8 GPUs on a 4-GPU box"), False),
        (Exception, PoolClosed("closed"), False),
        (BaseException, TimeoutError(), True),
    ],
)
def test_should_retry(retry_on: object, error: BaseException, expected: bool) -> None:
    assert should_retry(check_retry_on(retry_on), error) is expected


@pytest.mark.parametrize("bad", ["ValueError", 3, (ValueError, "x"), int])
def test_retry_on_must_be_types_or_a_predicate(bad: object) -> None:
    with pytest.raises(TypeError, match="retry_on must be an exception type"):
        check_retry_on(bad)
