"""Fixtures shared by the server tests: one real uvicorn server (tiny-llama on CPU) per test module,
and an `openai` client pointed at it."""

from collections.abc import Iterator

import openai
import pytest

from context_forge.server.testing import Server, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server() as s:
        yield s


@pytest.fixture()
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
