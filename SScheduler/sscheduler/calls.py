"""One streamed request through the async OpenAI client, timed: latency, time to first token, usage.

Requests are always streamed with `stream_options: {"include_usage": true}`, so the last chunk
carries `usage` (with `prompt_tokens_details.cached_tokens` where the server reports it). The
first token is the first chunk that carries a choice. A server that sends no usage leaves the
token counts at 0 (`usage_reported` False).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai

__all__ = ["CallResult", "describe_error", "normalize_base_url", "resolve_model", "stream_chat", "stream_completion"]

_STREAM_OPTIONS = {"include_usage": True}


@dataclass(frozen=True)
class CallResult:
    """What one request returned; times are `time.perf_counter()` seconds."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    usage_reported: bool
    sent_at: float
    first_token_at: float | None
    finished_at: float

    @property
    def latency_s(self) -> float:
        return self.finished_at - self.sent_at

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at


async def stream_chat(
    client: openai.AsyncOpenAI, model: str, messages: Sequence[dict[str, Any]], **params: Any
) -> CallResult:
    create: Any = client.chat.completions.create
    sent = time.perf_counter()
    stream = await create(
        model=model, messages=list(messages), stream=True, stream_options=_STREAM_OPTIONS, **params
    )
    return await _consume(stream, sent, lambda choice: choice.delta.content, role_chunk=True)


async def stream_completion(
    client: openai.AsyncOpenAI, model: str, prompt: str | Sequence[int], **params: Any
) -> CallResult:
    create: Any = client.completions.create
    sent = time.perf_counter()
    stream = await create(
        model=model, prompt=prompt if isinstance(prompt, str) else list(prompt), stream=True,
        stream_options=_STREAM_OPTIONS, **params,
    )
    return await _consume(stream, sent, lambda choice: choice.text, role_chunk=False)


async def _consume(stream: Any, sent: float, text_of: Any, role_chunk: bool) -> CallResult:
    parts: list[str] = []
    first: float | None = None
    finish: str | None = None
    usage = None
    async with stream:
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                text = text_of(choice) or ""
                if first is None and (text or choice.finish_reason or not role_chunk):
                    first = time.perf_counter()
                parts.append(text)
                finish = choice.finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
    done = time.perf_counter()
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    return CallResult(
        text="".join(parts),
        finish_reason=finish,
        prompt_tokens=int(usage.prompt_tokens or 0) if usage is not None else 0,
        cached_tokens=int(getattr(details, "cached_tokens", 0) or 0),
        completion_tokens=int(usage.completion_tokens or 0) if usage is not None else 0,
        usage_reported=usage is not None,
        sent_at=sent,
        first_token_at=first,
        finished_at=done,
    )


def normalize_base_url(url: str) -> str:
    """The OpenAI API root: `http://host:port` and `http://host:port/v1/` both become `.../v1`."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"base URL must start with http:// or https://, got {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


async def resolve_model(client: openai.AsyncOpenAI) -> str:
    """The first model the server lists on `/v1/models`."""
    page = await client.models.list()
    ids = [m.id for m in page.data]
    if not ids:
        raise ValueError(f"the server at {client.base_url} lists no model on /v1/models; pass a model name")
    return ids[0]


def describe_error(exc: BaseException) -> str:
    """`Type: message`, with the underlying cause for connection errors (whose message is generic)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if isinstance(exc, openai.APIConnectionError) and cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return text
