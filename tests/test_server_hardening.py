"""Inputs a new user's probe found: text that cannot be encoded, oversize bodies, NaN sampling
values, an unexpected error; each is a clean 4xx (or one 500) and the client's connection stays
usable. Also the page gauges an operator reads on /metrics."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from context_forge.server import convert
from context_forge.server.testing import MODEL, Server, error_of, serve_app, wait_until, with_config

JSON = {"content-type": "application/json"}
CHAT = '{"model": "tiny-llama", "messages": [{"role": "user", "content": %s}], "max_tokens": 2%s}'


def post_raw(http: httpx.Client, path: str, text: str) -> httpx.Response:
    """Posts `text` as written (JSON escapes such as \\ud800 stay escapes on the wire)."""
    return http.post(path, content=text.encode("ascii"), headers=JSON)


@pytest.fixture()
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


def still_usable(http: httpx.Client) -> None:
    """The same client (same pooled keep-alive connection) gets its next answer."""
    r = http.post("/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 1})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path, text, param",
    [
        ("/chat/completions", CHAT % ('"a\\ud800b"', ""), "messages[0].content"),
        ("/chat/completions", CHAT % ('[{"type": "text", "text": "\\udfff"}]', ""), "messages[0].content[0].text"),
        ("/chat/completions", CHAT % ('"hi"', ', "stop": ["ok", "\\ud83d"]'), "stop[1]"),
        ("/chat/completions", CHAT % ('"hi"', ', "workflow": {"workflow_id": "w\\ud800"}'), "workflow.workflow_id"),
        ("/chat/completions", CHAT % ('"hi"', ', "logit_bias": {"\\udc00": 1}'), "logit_bias"),
        ("/completions", '{"model": "tiny-llama", "prompt": "\\ud800", "max_tokens": 2}', "prompt"),
        ("/completions", '{"model": "tiny-llama", "prompt": ["x\\ud800"], "max_tokens": 2}', "prompt[0]"),
        ("/workflows", '{"workflow_id": "w", "agents": [{"agent_id": "\\ud800"}]}', "agents[0].agent_id"),
        ("/workflows/w/events", '{"event": "agent_finished", "agent_id": "\\ud800"}', "agent_id"),
    ],
)
def test_unencodable_text_is_400_naming_the_field(http: httpx.Client, path: str, text: str, param: str) -> None:
    r = post_raw(http, path, text)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"] == param and err["code"] == "invalid_text"
    assert param in err["message"] and "surrogate" in err["message"]
    still_usable(http)


def test_too_deeply_nested_body_is_400(http: httpx.Client) -> None:
    for depth in (100, 5000):
        r = post_raw(http, "/chat/completions", CHAT % ('"hi"', ', "user": ' + "[" * depth + "]" * depth))
        assert r.status_code == 400 and "nested too deeply" in error_of(r)["message"]
    still_usable(http)


@pytest.mark.parametrize(
    "extra, param",
    [
        (', "temperature": NaN', "temperature"),
        (', "temperature": Infinity', "temperature"),
        (', "top_p": NaN', "top_p"),
        (', "presence_penalty": -Infinity', "presence_penalty"),
        (', "logit_bias": {"5": NaN}', "logit_bias[5]"),
    ],
)
def test_non_finite_sampling_numbers_say_so(http: httpx.Client, extra: str, param: str) -> None:
    r = post_raw(http, "/chat/completions", CHAT % ('"hi"', extra))
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"] == param
    assert f"'{param}' must be a finite number" in err["message"]


def test_an_unexpected_error_is_500_and_the_connection_survives(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> list[int]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(convert, "chat_prompt", broken)
    r = post_raw(http, "/chat/completions", CHAT % ('"hi"', ""))
    assert r.status_code == 500
    err = error_of(r)
    assert err["type"] == "server_error" and err["message"] == "internal server error (RuntimeError)"
    still_usable(http)


@pytest.fixture(scope="module")
def small_limit(server: Server) -> Iterator[Server]:
    """A second HTTP front end on the module's engine with a 64 KiB body limit."""
    with serve_app(server.engine, with_config(server, max_request_bytes=64 * 1024)) as s:
        yield s


def raw_request(url: str, head: str, body_chunks: Iterator[bytes], read_after: int) -> bytes:
    """Sends `head`, then body chunks until `read_after` bytes went out, then reads the answer
    without ever finishing the body (a server waiting for the whole body would hang here)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = 0
        for chunk in body_chunks:
            if sent >= read_after:
                break
            sock.sendall(chunk)
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            data = sock.recv(65536)
            assert data, f"connection closed before a full answer: {answer!r}"
            answer += data
        return answer


def _length(answer: bytes) -> int:
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_oversize_content_length_is_413_before_the_body_is_read(small_limit: Server, server: Server) -> None:
    for s, size in ((small_limit, 64 * 1024 + 1), (server, 50 * 1024 * 1024)):  # default: 8 MiB
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {size}\r\n\r\n")
        t0 = time.perf_counter()
        answer = raw_request(s.url, head, iter([b"{" * 1024] * 8), read_after=4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"request_too_large" in answer and b"max_request_bytes" in answer
        assert time.perf_counter() - t0 < 2


def test_chunked_body_over_the_limit_is_413_while_it_is_still_arriving(small_limit: Server) -> None:
    head = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 8192
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer = raw_request(small_limit.url, head, iter([chunk] * 1000), read_after=128 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer


def test_413_keeps_the_keep_alive_connection_usable(small_limit: Server) -> None:
    big = json.dumps({"model": MODEL, "prompt": "x" * 200_000, "max_tokens": 1})
    with httpx.Client(base_url=small_limit.base_url, timeout=30) as c:
        r = c.post("/completions", content=big.encode(), headers=JSON)
        assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
            for _ in range(25):
                yield b"x" * 8192

        r = c.post("/completions", content=chunks(), headers=JSON)
        assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
        still_usable(c)
    ok = httpx.post(small_limit.base_url + "/completions", json={"model": MODEL, "prompt": "y" * 200, "max_tokens": 1})
    assert ok.status_code == 200  # under the limit: served as before


def test_page_gauges_tell_a_warm_cache_from_pages_in_use(server: Server, client: openai.OpenAI) -> None:
    for i in range(3):
        client.completions.create(model=MODEL, prompt=f"warm the cache {i} " * 8, max_tokens=2)
    wait_until(server.engine_idle, what="engine idle")
    idle = server.pages()
    assert idle["cached"] > 0 and idle["in_use"] == 0
    assert server.metric('context_forge_pool_used_pages{pool="device"}') == idle["capacity"] - idle["free"]
    stream = client.completions.create(model=MODEL, prompt="hold pages " * 10, max_tokens=300,
                                       stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    busy = server.pages()
    assert busy["in_use"] > 0
    assert busy["free"] + busy["cached"] + busy["in_use"] + busy["loading"] == busy["capacity"]
    stream.close()
    wait_until(lambda: server.pages()["in_use"] == 0, what="pages back after the stream closed")
