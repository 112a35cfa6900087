from __future__ import annotations

import os
import tempfile

import pytest

# tests/test_testing_*.py run gpupool's pytest plugin in pytest runs of their own.
pytest_plugins = ["pytester"]

# Pools on (fake) NVML join the machine-wide ledger by default: the tests' own, not the
# machine's /dev/shm/gpupool. An environment variable, so that the processes the tests
# start inherit it.
os.environ["GPUPOOL_LEDGER"] = tempfile.mkdtemp(prefix="gpupool-test-ledger-")
# Ray (tests/ray): all of it on 127.0.0.1, and nothing sent to Ray's usage statistics.
# Read when `ray` is imported (whichever test imports it first), so set here, first:
# without the first, Ray 2.60 advertises the machine's interface address and a client
# hangs connecting to it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on both backends."""
    return str(request.param)
