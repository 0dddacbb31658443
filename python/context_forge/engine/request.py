"""Public request/response messages of the engine (the contract used by ``server/``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .errors import InvalidRequest

FinishReason = Literal["stop", "length", "abort"] | None


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature == 0`` (or ``top_k == 1``) is greedy. ``top_k == -1`` disables top-k.
    ``stop`` strings end generation at text level and are not part of the output text;
    ``stop_token_ids`` (and the tokenizer's EOS unless ``ignore_eos``) end it at token level.
    ``seed`` makes sampling reproducible for this request regardless of batching.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def validate(self) -> None:
        """Raise :class:`InvalidRequest` naming the first bad field."""
        t = self.temperature
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise InvalidRequest(f"temperature must be a finite number >= 0, got {t!r}", "temperature")
        p = self.top_p
        if not _is_number(p) or not 0 < p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {p!r}", "top_p")
        k = self.top_k
        if not _is_int(k) or k == 0 or k < -1:
            raise InvalidRequest(f"top_k must be -1 (disabled) or >= 1, got {k!r}", "top_k")
        m = self.max_tokens
        if not _is_int(m) or m < 1:
            raise InvalidRequest(f"max_tokens must be an integer >= 1, got {m!r}", "max_tokens")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequest(f"stop must be a list of non-empty strings, got {self.stop!r}", "stop")
        ids = self.stop_token_ids
        if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
            raise InvalidRequest(f"stop_token_ids must be a list of token ids >= 0, got {ids!r}", "stop_token_ids")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidRequest(f"ignore_eos must be a boolean, got {self.ignore_eos!r}", "ignore_eos")
        if self.seed is not None and not _is_int(self.seed):
            raise InvalidRequest(f"seed must be an integer or null, got {self.seed!r}", "seed")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise InvalidRequest(f"seed must fit in 64 bits, got {self.seed}", "seed")


@dataclass
class GenerateRequest:
    """One generation request. ``workflow_id`` / ``agent_id`` tie it to a multi-agent workflow:
    the cache ranks its KV by how soon the agent runs again."""

    rid: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    workflow_id: str | None = None
    agent_id: str | None = None
    stream: bool = False


@dataclass
class GenerateOutput:
    """One streamed delta. ``token_ids`` and ``text`` are new since the previous delta; the last
    delta has ``finish_reason`` set. ``cached_tokens`` counts prompt tokens whose KV was reused
    (device or host hit) rather than recomputed."""

    rid: str
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
