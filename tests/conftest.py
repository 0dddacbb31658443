"""Fixtures shared by the tests. Engines: ``make_engine`` (per test) and ``module_engines`` (per
module) start real tiny-llama engines on the CPU (``engine_support.EngineFactory``; a module's
``ENGINE_CONFIG`` dict sets its defaults) and, at teardown, shut them down and check every page came
back. Servers: one real uvicorn server (tiny-llama on CPU) per test module, and an `openai` client
pointed at it. The server stack is imported only when a test asks for these fixtures, so
engine/model tests also run where fastapi or openai are not installed (the GPU box).

Every test that uses the module's `server` ends by checking page accounting as an operator would
see it: once the engine is idle, /metrics must show free + cached + in_use + loading == capacity
and nothing in use (`Server.check_pages`). `running_server()` does the same when it stops."""

from collections.abc import Iterator
from typing import Any

import pytest


def _engine_factory(request: pytest.FixtureRequest) -> Any:
    from engine_support import EngineFactory

    return EngineFactory(dict(getattr(request.module, "ENGINE_CONFIG", {})))


@pytest.fixture()
def make_engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    factory = _engine_factory(request)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_engines(request: pytest.FixtureRequest) -> Iterator[Any]:
    factory = _engine_factory(request)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from context_forge.server.testing import running_server

    with running_server() as s:
        yield s


@pytest.fixture(autouse=True)
def _pages_add_up_after_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used `server`: the page invariant, read from /metrics."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").check_pages()


@pytest.fixture()
def client(server: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
