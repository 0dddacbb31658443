"""The engine's per-request state: tokens, KV pages, output stream, timing."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .output import OutputStream
from .request import FinishReason, GenerateOutput, GenerateRequest

if TYPE_CHECKING:
    from context_forge.cache.node import RadixNode


class Phase(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class ReqState:
    """One request inside the engine.

    ``all_ids`` is prompt + generated tokens. ``computed`` tokens of it have KV in the pages of
    ``page_table``; the remaining ``num_pending`` tokens are fed next (a whole prompt chunk in
    prefill, exactly one token in decode). The first ``shared_pages`` entries of ``page_table``
    belong to the radix tree and are protected by the lock on ``node``; the rest are the request's
    own pages, freed or handed to the tree when it leaves the running batch.
    """

    req: GenerateRequest
    stream: OutputStream
    generator: torch.Generator
    emit: Callable[[GenerateOutput | BaseException], None]
    all_ids: list[int] = field(default_factory=list)
    phase: Phase = Phase.WAITING
    page_table: list[int] = field(default_factory=list)
    shared_pages: int = 0
    node: RadixNode | None = None
    computed: int = 0
    cached_tokens: int = 0
    admitted_once: bool = False
    prompt_cached: bool = False
    num_preemptions: int = 0
    finish_reason: FinishReason = None
    unsent_ids: list[int] = field(default_factory=list)
    unsent_text: str = ""
    kv_gates: list = field(default_factory=list)
    """Per-layer gates of loads still landing in this request's shared pages
    (``prefetch_wait_mode: layer``); its next forward pass waits on them, layer by layer."""

    def __post_init__(self) -> None:
        if not self.all_ids:
            self.all_ids = list(self.req.prompt_token_ids)

    @property
    def rid(self) -> str:
        return self.req.rid

    @property
    def prompt_len(self) -> int:
        return len(self.req.prompt_token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.all_ids[self.prompt_len:]

    @property
    def num_output(self) -> int:
        return len(self.all_ids) - self.prompt_len

    @property
    def num_pending(self) -> int:
        return len(self.all_ids) - self.computed

    @property
    def in_decode(self) -> bool:
        return self.num_pending == 1 and self.num_output > 0

    @property
    def own_pages(self) -> list[int]:
        return self.page_table[self.shared_pages:]

    def output(self, token_ids: list[int], text: str) -> GenerateOutput:
        return GenerateOutput(
            rid=self.rid, token_ids=token_ids, text=text, finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_len, cached_tokens=self.cached_tokens,
            completion_tokens=self.num_output,
        )
