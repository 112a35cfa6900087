from __future__ import annotations

import os
import tempfile

import pytest

# Pools on (fake) NVML join the machine-wide ledger by default: the tests' own, not the
# machine's /dev/shm/gpupool. An environment variable, so that the processes the tests
# start inherit it.
os.environ["GPUPOOL_LEDGER"] = tempfile.mkdtemp(prefix="gpupool-test-ledger-")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on both backends."""
    return str(request.param)
