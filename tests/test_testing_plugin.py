"""gpupool's pytest plugin, run by pytest's own ``pytester``: the fixtures on both anyio
backends and in virtual time, leak detection, the markers and their errors.

The GPU leases are tested in tests/test_testing_leases.py and, across processes,
in tests/test_testing_xdist.py.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

BACKENDS = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A test directory whose anyio tests run on asyncio and trio."""
    pytester.makeconftest(BACKENDS)
    return pytester


def test_the_fixtures_work_on_asyncio_and_trio(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import anyio
        import pytest
        from gpupool import FakeGPUProvider, GPUResourcePool, ParallelRunner

        @pytest.mark.anyio
        async def test_pool(gpu_pool, fake_gpus, anyio_backend):
            assert isinstance(gpu_pool, GPUResourcePool)
            assert isinstance(fake_gpus, FakeGPUProvider) and fake_gpus.count == 4
            async with gpu_pool.allocation(2) as allocation:
                assert len(allocation.gpu_uuids) == 2
            assert anyio_backend in ("asyncio", "trio")

        @pytest.mark.anyio
        async def test_runner(gpu_runner):
            assert isinstance(gpu_runner, ParallelRunner)
            results = await gpu_runner.map(lambda x, allocation: x * 2, [1, 2, 3], required_gpus=1)
            assert [r.value for r in results] == [2, 4, 6]
        """
    )
    result = suite.runpytest("-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_pool?asyncio? PASSED*", "*test_pool?trio? PASSED*"])


def test_a_leaked_allocation_fails_the_test_naming_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        @pytest.mark.fake_gpus(2)
        async def test_leaks(gpu_pool):
            await gpu_pool.acquire(1)
            await gpu_pool.acquire(1)

        @pytest.mark.anyio
        async def test_releases(gpu_pool):
            allocation = await gpu_pool.acquire(1)
            await gpu_pool.release(allocation)
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks?asyncio?*",
            "*test_leaks?asyncio? leaked 2 GPU allocation(s) of the gpu_pool fixture, still held "
            "after the test: allocation 1 on GPU ?; allocation 2 on GPU ?;*",
        ]
    )
    assert "test_releases" not in "\n".join(line for line in result.outlines if "leaked" in line)


def test_a_fixture_that_holds_an_allocation_past_the_test_is_no_leak(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.fixture
        async def held(gpu_pool):
            async with gpu_pool.allocation(1) as allocation:
                yield allocation

        @pytest.mark.anyio
        async def test_uses_it(held, gpu_pool):
            assert gpu_pool.statistics().holder_count == 1
        """
    )
    suite.runpytest().assert_outcomes(passed=2)


def test_fake_gpus_by_marker_and_by_indirect_parametrisation(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        from gpupool.testing import FakeGPUs

        @pytest.mark.fake_gpus(2, memory_mb=[8000, 16000], memory_used_mb=[0, 6000],
                               utilization_pct=50, unhealthy={1: "XID 79"}, name="Test GPU")
        def test_marker(fake_gpus):
            gpus = fake_gpus.snapshot()
            assert [g.memory_total_mb for g in gpus] == [8000, 16000]
            assert [g.memory_free_mb for g in gpus] == [8000, 10000]
            assert [g.utilization_pct for g in gpus] == [50, 50]
            assert [g.healthy for g in gpus] == [True, False]
            assert gpus[1].health_detail == "XID 79"
            assert gpus[0].name == "Test GPU 0"

        @pytest.mark.parametrize(
            ("fake_gpus", "count"),
            [(1, 1), ({"count": 3, "memory_mb": 8000}, 3), (FakeGPUs.of(5), 5)],
            indirect=["fake_gpus"],
        )
        def test_param(fake_gpus, count):
            assert fake_gpus.count == count

        @pytest.mark.fake_gpus(memory_mb=4000)
        @pytest.mark.parametrize("fake_gpus", [2], indirect=True)
        def test_param_over_marker(fake_gpus):
            assert [g.memory_total_mb for g in fake_gpus.snapshot()] == [4000, 4000]

        @pytest.mark.anyio
        @pytest.mark.fake_gpus(2, unhealthy=[0])
        async def test_a_lost_gpu_is_not_granted(gpu_pool):
            async with gpu_pool.allocation(1) as allocation:
                assert allocation.gpu_indices == (1,)
        """
    )
    suite.runpytest().assert_outcomes(passed=7)


def test_pool_and_runner_options_come_from_their_markers(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        @pytest.mark.gpu_pool(max_parallel=1)
        @pytest.mark.gpu_runner(max_parallel=3)
        async def test_options(gpu_pool, gpu_runner):
            assert gpu_pool.statistics().max_parallel == 1
            assert gpu_runner.statistics().max_parallel == 3
        """
    )
    suite.runpytest().assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("fake_gpus(colour='red')", "unknown fake GPU option(s) colour: the options are count,*"),
        ("fake_gpus('two')", "count must be an int in [[]0, 1024], got 'two'*"),
        ("fake_gpus(2, memory_mb=[1, 2, 3])", "memory_mb must be one value or a sequence of 2*"),
        ("fake_gpus(2, unhealthy=[5])", "unhealthy index must be an int in [[]0, 1], got 5*"),
        ("fake_gpus(1, 2)", "@pytest.mark.fake_gpus takes one positional argument (count)*"),
    ],
)
def test_a_wrong_fake_gpus_marker_names_what_is_wrong(
    suite: pytest.Pytester, marker: str, message: str
) -> None:
    suite.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_it(fake_gpus):
            pass
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"E   *{message}"])


def test_virtual_clock_makes_an_hour_of_waiting_instant(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import anyio
        import pytest
        from gpupool import PoolTimeout
        from gpupool.testing import virtual_clock

        @virtual_clock()
        @pytest.mark.anyio
        @pytest.mark.fake_gpus(1)
        async def test_an_hour(gpu_pool, anyio_backend):
            assert anyio_backend[0] == "trio"
            start = anyio.current_time()
            async with gpu_pool.allocation(1):
                with pytest.raises(PoolTimeout):
                    await gpu_pool.acquire(1, timeout=3600)
            assert anyio.current_time() - start >= 3600
        """
    )
    result = suite.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_an_hour?trio-virtual-clock? PASSED*"])


def test_the_plugin_can_be_turned_off(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        def test_it(gpu_pool):
            pass
        """
    )
    result = suite.runpytest("-p", "no:gpupool")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'gpu_pool' not found*"])


def test_the_plugin_registers_its_markers_for_strict_markers(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--markers")
    for name in ("gpus", "fake_gpus", "gpu_pool", "gpu_runner"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{name}(*"])


def test_a_session_without_leased_tests_never_imports_the_lease_machinery(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_unleased(fake_gpus):
            assert "gpupool.testing.leases" not in sys.modules
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
