"""gpupool's pytest plugin: fake GPUs as fixtures, and GPU leases for test runs.

Registered through the ``pytest11`` entry point, so pytest loads it wherever
gpupool is installed; ``-p no:gpupool`` turns it off. docs/testing.md is the
user's guide. What it adds:

* fixtures ``fake_gpus`` (a :class:`~gpupool.testing.FakeGPUProvider`, shaped
  by ``@pytest.mark.fake_gpus(...)`` or an indirect parametrisation),
  ``gpu_pool`` (a pool on it; a test that leaks an allocation fails),
  ``gpu_runner`` (a :class:`~gpupool.ParallelRunner` on that pool), all on
  the test's anyio backend, and ``gpu_lease`` (the GPUs leased for the test);
* ``@pytest.mark.gpus(n, mem="8G")`` and ``--gpus-per-test``: ``n`` GPUs held
  in the machine-wide ledger for the test (gpupool.testing.leases).

Imported by every pytest run on a machine with gpupool: at import it takes
only pytest and gpupool itself. The lease machinery is imported when a test
first asks for GPUs, and nothing here imports Hypothesis or trio.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .._core.checks import check_int, shown
from .._core.units import parse_memory_mb
from .fakes import FakeGPUs
from .lease_settings import LeaseSettings

if TYPE_CHECKING:
    from .. import GPUAllocation, GPUResourcePool, ParallelRunner, PoolStatistics
    from ..providers.fake import FakeGPUProvider
    from .leases import Lease, LeaseBroker

__all__ = ["fake_gpus", "gpu_lease", "gpu_pool", "gpu_runner"]

_SETTINGS: pytest.StashKey[LeaseSettings] = pytest.StashKey()
_BROKER: pytest.StashKey[LeaseBroker] = pytest.StashKey()
_LEASE: pytest.StashKey[Lease] = pytest.StashKey()

_MARKERS = (
    "gpus(n=1, *, mem=None): hold n GPUs (each with mem free: 8G, 512M or MB) in the "
    "machine-wide ledger for the test, with CUDA_VISIBLE_DEVICES set to them; gpus(0): none",
    "fake_gpus(count=4, *, memory_mb, memory_used_mb, utilization_pct, unhealthy, "
    "snapshot_latency_s, name): the fake GPUs of the fake_gpus fixture",
    "gpu_pool(**options): GPUResourcePool options for the gpu_pool fixture",
    "gpu_runner(**options): ParallelRunner options for the gpu_runner fixture",
)

_TOO_MANY = ("skip", "fail")


# -- options -------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpupool", "GPU leases for tests (gpupool, docs/testing.md)")
    options = (
        (
            "--gpus-per-test",
            "gpus_per_test",
            "N",
            "GPUs to lease for every test without a gpus marker (default 0: none)",
        ),
        (
            "--gpus-timeout",
            "gpus_timeout",
            "SECONDS",
            "how long a test waits for its GPUs before it fails (default 300)",
        ),
        (
            "--gpus-too-many",
            "gpus_too_many",
            "skip|fail",
            "what a test that asks for more GPUs or memory than the machine has does "
            "(default skip)",
        ),
        (
            "--gpus-fake",
            "gpus_fake",
            "N",
            "lease from N fake GPUs instead of the machine's (needs --gpus-ledger)",
        ),
        (
            "--gpus-ledger",
            "gpus_ledger",
            "DIR",
            "the ledger directory leases are held in (default: the machine's, "
            "$GPUPOOL_LEDGER or /dev/shm/gpupool)",
        ),
    )
    for flag, name, metavar, text in options:
        group.addoption(flag, dest=name, metavar=metavar, default=None, help=text)
        parser.addini(name, f"{text} ({flag})", default="")


def _setting(config: pytest.Config, name: str) -> tuple[str, str] | None:
    """The option as given, and where (for messages); the command line wins."""
    given = config.getoption(name)
    if given is not None:
        return str(given), "--" + name.replace("_", "-")
    text = str(config.getini(name)).strip()
    return (text, f"the {name} ini option") if text else None


def _int_setting(config: pytest.Config, name: str, minimum: int) -> int | None:
    found = _setting(config, name)
    if found is None:
        return None
    text, where = found
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise pytest.UsageError(f"{where} must be an int >= {minimum}, got {text!r}")
    return value


def _settings(config: pytest.Config) -> LeaseSettings:
    per_test = _int_setting(config, "gpus_per_test", 0) or 0
    fake = _int_setting(config, "gpus_fake", 1)
    timeout = 300.0
    found = _setting(config, "gpus_timeout")
    if found is not None:
        text, where = found
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):
            raise pytest.UsageError(f"{where} must be a number of seconds > 0, got {text!r}")
    too_many = "skip"
    found = _setting(config, "gpus_too_many")
    if found is not None:
        too_many, where = found
        if too_many not in _TOO_MANY:
            raise pytest.UsageError(f"{where} must be skip or fail, got {too_many!r}")
    ledger: Path | None = None
    found = _setting(config, "gpus_ledger")
    if found is not None:
        text, where = found
        ledger = Path(text).expanduser()
        if not ledger.is_absolute():
            base = Path.cwd() if where.startswith("--") else config.rootpath
            ledger = base / ledger
    if fake is not None and ledger is None:
        raise pytest.UsageError(
            "--gpus-fake needs --gpus-ledger DIR (or the gpus_ledger ini option): fake GPUs "
            "are shared between test processes (pytest-xdist workers, other suites) only "
            "through a ledger directory they all name"
        )
    return LeaseSettings(
        per_test=per_test, timeout=timeout, too_many=too_many, fake_count=fake, ledger=ledger
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[_SETTINGS] = _settings(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    broker = config.stash.get(_BROKER, None)
    if broker is not None:
        del config.stash[_BROKER]
        broker.close()


# -- leases --------------------------------------------------------------------------


def _marker_request(n: object = 1, *, mem: object = None) -> tuple[int, int]:
    """``@pytest.mark.gpus(n, mem=...)``'s arguments, checked: (GPUs, MB free on each)."""
    gpus = check_int("@pytest.mark.gpus: n", n, 0)
    if mem is None:
        return gpus, 0
    if isinstance(mem, str):
        try:
            return gpus, parse_memory_mb(mem)
        except ValueError as error:
            raise ValueError(f"@pytest.mark.gpus: mem: {error}") from None
    if isinstance(mem, int) and not isinstance(mem, bool):
        return gpus, check_int("@pytest.mark.gpus: mem (MB)", mem, 0)
    raise TypeError(
        f"@pytest.mark.gpus: mem must be a size like '8G' or '512M', or an int of MB, "
        f"got {shown(mem)}"
    )


_MARKER_SIGNATURE = inspect.signature(_marker_request)


def _wanted(item: pytest.Item, settings: LeaseSettings) -> tuple[int, int] | None:
    """The GPUs (and MB free on each) ``item`` is to hold, or None."""
    marker = item.get_closest_marker("gpus")
    if marker is not None:
        try:
            _MARKER_SIGNATURE.bind(*marker.args, **marker.kwargs)
        except TypeError as error:
            raise TypeError(f"@pytest.mark.gpus takes (n=1, *, mem=None): {error}") from None
        gpus, memory_mb = _marker_request(*marker.args, **marker.kwargs)
    else:
        gpus, memory_mb = settings.per_test, 0
    return (gpus, memory_mb) if gpus else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A plain hook, registered after pytest's own: it runs before the runner's,
    # which sets up the fixtures, so they see the leased GPUs too.
    settings = item.config.stash.get(_SETTINGS, None)
    if settings is None:
        return
    wanted = _wanted(item, settings)
    if wanted is None:
        return
    broker = item.config.stash.get(_BROKER, None)
    if broker is None:
        from .leases import LeaseBroker

        broker = item.config.stash[_BROKER] = LeaseBroker(settings)
    item.stash[_LEASE] = broker.take(item.nodeid, *wanted)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    try:
        return (yield)
    finally:
        lease = item.stash.get(_LEASE, None)
        if lease is not None:
            del item.stash[_LEASE]
            item.config.stash[_BROKER].give_back(lease)


@pytest.fixture
def gpu_lease(request: pytest.FixtureRequest) -> GPUAllocation | None:
    """The GPUs leased for this test (``@pytest.mark.gpus``, ``--gpus-per-test``), or None.

    Its ``gpu_uuids`` are what the test's ``CUDA_VISIBLE_DEVICES`` holds, and
    its ``env`` what a child process needs to use them.
    """
    lease = request.node.stash.get(_LEASE, None)
    return None if lease is None else lease.allocation


# -- fake GPUs, a pool and a runner ---------------------------------------------------


def _fake_gpus_of(request: pytest.FixtureRequest) -> FakeGPUs:
    """The marker's fake GPUs, with an indirect parameter's options on top."""
    param = getattr(request, "param", None)
    if isinstance(param, FakeGPUs):
        return param
    given: dict[str, Any] = {}
    marker = request.node.get_closest_marker("fake_gpus")
    if marker is not None:
        if len(marker.args) > 1:
            raise TypeError(
                f"@pytest.mark.fake_gpus takes one positional argument (count), "
                f"got {shown(marker.args)}"
            )
        given.update(zip(("count",), marker.args, strict=False))
        given.update(marker.kwargs)
    if isinstance(param, Mapping):
        given.update(param)
    elif param is not None:
        return FakeGPUs.of(param, **{k: v for k, v in given.items() if k != "count"})
    return FakeGPUs.of(given)


@pytest.fixture
def fake_gpus(request: pytest.FixtureRequest) -> FakeGPUProvider:
    """Fake GPUs for the test: 4 of 24 GiB, idle, unless it says otherwise.

    ``@pytest.mark.fake_gpus(2, memory_mb=16_000, unhealthy=[1])``, or
    ``@pytest.mark.parametrize("fake_gpus", [1, {"count": 8}], indirect=True)``
    (a count, a mapping of :class:`~gpupool.testing.FakeGPUs`' arguments, or a
    ``FakeGPUs``); a parameter's values override the marker's. The provider's
    setters (``set_memory_used``, ``set_healthy``, ``fail_next``, ...) script
    what happens during the test.
    """
    return _fake_gpus_of(request).provider()


def _held(statistics: PoolStatistics) -> dict[int, list[int]]:
    """The allocations a pool still holds, by id, with their GPU indices."""
    held: dict[int, list[int]] = {}
    for gpu in statistics.gpus:
        for holder in gpu.holder_ids:
            held.setdefault(holder, []).append(gpu.index)
    return held


@pytest.fixture
async def gpu_pool(
    fake_gpus: FakeGPUProvider, anyio_backend: object, request: pytest.FixtureRequest
) -> AsyncIterator[GPUResourcePool]:
    """A :class:`~gpupool.GPUResourcePool` on ``fake_gpus``, open for the test.

    Options of ``@pytest.mark.gpu_pool(...)`` go to the pool (it joins no
    ledger unless given ``ledger=DIR``). After the test, every allocation
    must have been released: one still held fails the test's teardown with a
    message naming it.
    """
    from .. import GPUResourcePool

    marker = request.node.get_closest_marker("gpu_pool")
    options: dict[str, Any] = {"ledger": None, **(marker.kwargs if marker else {})}
    async with GPUResourcePool(fake_gpus, **options) as pool:
        yield pool
        held = _held(pool.statistics())
    if held:
        leaked = "; ".join(
            f"allocation {id_} on GPU{'s' if len(gpus) > 1 else ''} {', '.join(map(str, gpus))}"
            for id_, gpus in sorted(held.items())
        )
        pytest.fail(
            f"{request.node.nodeid} leaked {len(held)} GPU allocation(s) of the gpu_pool "
            f"fixture, still held after the test: {leaked}; release each one "
            "(`async with pool.allocation(...)` does it even on error)",
            pytrace=False,
        )


@pytest.fixture
async def gpu_runner(
    gpu_pool: GPUResourcePool, request: pytest.FixtureRequest
) -> AsyncIterator[ParallelRunner]:
    """A :class:`~gpupool.ParallelRunner` on ``gpu_pool``, open for the test.

    Options of ``@pytest.mark.gpu_runner(...)`` (``max_parallel``,
    ``journal``, ...) go to the runner; it is closed before the pool's leak
    check, so a runner's own allocations never count as leaked.
    """
    from .. import ParallelRunner

    marker = request.node.get_closest_marker("gpu_runner")
    async with ParallelRunner(gpu_pool, **(marker.kwargs if marker else {})) as runner:
        yield runner
