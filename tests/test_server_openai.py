"""The OpenAI API through the real `openai` client against a real uvicorn server and engine (CPU).

Plain and streaming chat/text completions, token-id prompts, concurrency, cached-token usage,
client disconnects (streaming and plain) and the /metrics counters those requests move.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai

from context_forge.server.testing import MODEL, Server, wait_until




def test_health_and_models(server: Server, client: openai.OpenAI) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_model_len"] == server.engine.context_len


def test_chat_plain(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8,
        temperature=0, extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_greedy_is_deterministic_and_seed_is_accepted(client: openai.OpenAI) -> None:
    def ask(**kw: object) -> str:
        r = client.completions.create(model=MODEL, prompt="abc", max_tokens=12, extra_body={"ignore_eos": True}, **kw)
        return r.choices[0].text

    assert ask(temperature=0) == ask(temperature=0)
    assert ask(temperature=1.0, seed=7) == ask(temperature=1.0, seed=7)


def test_completion_with_token_ids_and_stop_fields(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt=[72, 105, 33, 32, 104, 111], max_tokens=5, temperature=0.7, top_p=0.9,
        stop=["\x00never"], extra_body={"top_k": 20, "ignore_eos": True},
    )
    assert r.object == "text_completion"
    assert r.usage.prompt_tokens == 6
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_completion_echo_and_default_max_tokens(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="echo me", echo=True, extra_body={"ignore_eos": True})
    assert r.choices[0].text.startswith("echo me")
    assert r.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions


def test_chat_streaming_chunks_arrive_one_by_one(server: Server, client: openai.OpenAI) -> None:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=120, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    arrivals: list[float] = []
    chunks = []
    for chunk in stream:
        arrivals.append(time.perf_counter() - t0)
        chunks.append(chunk)
    t_end = time.perf_counter() - t0
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 10
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 120
    assert all(c.usage is None for c in chunks[:-1])
    # Streamed as produced: the first content arrives long before the last (not buffered at the end).
    first_content = arrivals[chunks.index(content[0])]
    assert first_content < 0.5 * t_end
    assert len({c.id for c in chunks}) == 1


def test_completion_streaming_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(
        model=MODEL, prompt="stream", max_tokens=10, stream=True, extra_body={"ignore_eos": True}
    ))
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_repeated_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 4  # 180 bytes: several 16-token pages
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens
    cached = second.usage.prompt_tokens_details.cached_tokens
    page = 16
    assert cached >= (second.usage.prompt_tokens - 1) // page * page > 0


def test_concurrent_requests_async_client(server: Server) -> None:
    async def main() -> list[openai.types.Completion]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        async with client:
            return await asyncio.gather(*[
                client.completions.create(
                    model=MODEL, prompt=f"request number {i}", max_tokens=6 + i, extra_body={"ignore_eos": True}
                )
                for i in range(8)
            ])

    results = asyncio.run(main())
    assert [r.usage.completion_tokens for r in results] == [6 + i for i in range(8)]
    assert len({r.id for r in results}) == 8


def test_async_streaming(server: Server) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10, stream=True,
                extra_body={"ignore_eos": True},
            )
            return [c.choices[0].finish_reason async for c in stream if c.choices]

    reasons = asyncio.run(main())
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])


def test_streaming_disconnect_aborts_and_frees_pages(server: Server, client: openai.OpenAI) -> None:
    aborted = server.metric("context_forge_aborted_requests_total")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "long story"}], max_tokens=400, stream=True,
        extra_body={"ignore_eos": True},
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_until(lambda: server.metric("context_forge_aborted_requests_total") == aborted + 1, what="abort counted")
    server.check_no_leak()


def test_plain_request_disconnect_aborts(server: Server) -> None:
    aborted = server.metric("context_forge_aborted_requests_total")
    body = json.dumps({"model": MODEL, "prompt": "slow", "max_tokens": 490, "ignore_eos": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: not server.engine_idle(), what="request running")
    wait_until(lambda: server.metric("context_forge_aborted_requests_total") == aborted + 1, what="abort counted")
    server.check_no_leak()


def test_metrics_move_after_requests(server: Server, client: openai.OpenAI) -> None:
    before = server.metrics()
    prompt = "metrics prompt that is long enough to fill a page or two of cache " * 2
    for _ in range(2):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, extra_body={"ignore_eos": True})
    after = server.metrics()
    key = 'context_forge_requests_total{endpoint="completions",finish_reason="length"}'
    assert after[key] - before.get(key, 0) == 2
    assert after["context_forge_completion_tokens_total"] - before["context_forge_completion_tokens_total"] == 6
    assert after["context_forge_prompt_tokens_total"] > before["context_forge_prompt_tokens_total"]
    assert after["context_forge_ttft_seconds_count"] - before["context_forge_ttft_seconds_count"] == 2
    assert after["context_forge_e2e_latency_seconds_count"] - before["context_forge_e2e_latency_seconds_count"] == 2
    assert after["context_forge_cached_prompt_tokens_total"] > before["context_forge_cached_prompt_tokens_total"]
    assert after["context_forge_device_hit_tokens_total"] > before["context_forge_device_hit_tokens_total"]
    assert after['context_forge_workflow_requests_total{workflow_id=""}'] >= 2
    assert 'context_forge_pool_capacity_pages{pool="device"}' in after
    assert "context_forge_pressure_mode" in after
    for name in ("issued", "completed", "cancelled", "wasted", "bytes", "stall_seconds"):
        assert f"context_forge_prefetch_{name}_total" in after
