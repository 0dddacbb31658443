"""Response and SSE-chunk builders for the two OpenAI endpoints.

`Formatter` is the seam between the generation driver (which only sees text deltas, finish reasons
and usage) and the wire shapes of `/v1/chat/completions` and `/v1/completions`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pydantic import BaseModel

from context_forge.server import protocol as p

SSE_DONE = b"data: [DONE]\n\n"


def sse(payload: BaseModel | dict) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    text = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return b"data: " + text.encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> p.Usage:
    return p.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=p.PromptTokensDetails(cached_tokens=cached_tokens),
    )


@dataclass
class Formatter(ABC):
    """Builds one request's response (plain) or its chunks (streaming)."""

    rid: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def opening(self) -> bytes | None:
        """A chunk sent before any text (chat announces the assistant role), or None."""
        return None

    @abstractmethod
    def chunk(self, text: str, finish_reason: str | None) -> bytes: ...

    @abstractmethod
    def usage_chunk(self, u: p.Usage) -> bytes: ...

    @abstractmethod
    def full(self, text: str, finish_reason: str | None, u: p.Usage) -> BaseModel: ...


class ChatFormatter(Formatter):
    def opening(self) -> bytes | None:
        return self._chunk([p.ChatChunkChoice(delta=p.ChatDelta(role="assistant", content=""))])

    def chunk(self, text: str, finish_reason: str | None) -> bytes:
        delta = p.ChatDelta(content=text if text or not finish_reason else None)
        return self._chunk([p.ChatChunkChoice(delta=delta, finish_reason=finish_reason)])

    def usage_chunk(self, u: p.Usage) -> bytes:
        return self._chunk([], u)

    def _chunk(self, choices: list[p.ChatChunkChoice], u: p.Usage | None = None) -> bytes:
        return sse(p.ChatCompletionChunk(id=self.rid, created=self.created, model=self.model, choices=choices, usage=u))

    def full(self, text: str, finish_reason: str | None, u: p.Usage) -> p.ChatCompletionResponse:
        choice = p.ChatChoice(message=p.ChatResponseMessage(content=text), finish_reason=finish_reason)
        return p.ChatCompletionResponse(id=self.rid, created=self.created, model=self.model, choices=[choice], usage=u)


class CompletionFormatter(Formatter):
    def chunk(self, text: str, finish_reason: str | None) -> bytes:
        choice = p.CompletionChoice(text=text, finish_reason=finish_reason)
        return sse(p.CompletionResponse(id=self.rid, created=self.created, model=self.model, choices=[choice]))

    def usage_chunk(self, u: p.Usage) -> bytes:
        return sse(p.CompletionResponse(id=self.rid, created=self.created, model=self.model, choices=[], usage=u))

    def full(self, text: str, finish_reason: str | None, u: p.Usage) -> p.CompletionResponse:
        choice = p.CompletionChoice(text=text, finish_reason=finish_reason)
        return p.CompletionResponse(id=self.rid, created=self.created, model=self.model, choices=[choice], usage=u)
