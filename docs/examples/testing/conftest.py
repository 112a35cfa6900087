import pytest


# Every @pytest.mark.anyio test runs twice: on asyncio and on trio.
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
