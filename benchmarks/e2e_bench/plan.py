"""What the end-to-end benchmark replays: trace sizes, the seeded traces, and the KV pool sizing.

Two size profiles: ``FULL`` (Llama-3-8B-shaped dummy model on one H100, every replay ~45 s or
less at the decode/prefill speeds the docs assume) and ``SMOKE`` (tiny-llama on CPU, seconds).
Every field is also a command-line flag (``--peer-rounds 6``) that overrides the profile.

Sizing rule (``size_pool``): the device pool is ``fraction`` (default 0.4) of the largest
working set (``Trace.working_set_tokens``) among the traces one server replays, but at least
``2 x`` the largest single request (prompt + output) so that requests always fit; rounded up to
whole pages. With ``hicache_ratio`` 2 the host tier then holds ~80 % of that working set, so
LRU thrashes on the device and, for the cyclic agent patterns here, on the host as well.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from context_forge.trace.generators import generate
from context_forge.trace.reader import parse_trace
from context_forge.trace.records import Trace
from context_forge.trace.writer import dump_trace

TRACE_KINDS = ("peer", "concurrent", "dynamic")
CONTEXT_MARGIN = 16
"""Tokens kept free below the context length (a BOS or template token added by a server)."""


def _size(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TraceSizes:
    """Generator parameters shared by the three traces, then per-trace sizes."""

    seed: int = _size(0, "seed of every trace generator")
    vocab_size: int = _size(32000, "token ids are drawn below this (must not exceed the model's vocabulary)")
    system_tokens: int = _size(4096, "tokens of each agent's system prompt")
    input_tokens: int = _size(256, "mean new input tokens per request")
    output_tokens: int = _size(32, "mean output tokens per request")
    think_s: float = _size(0.1, "mean think time between dependent requests (s)")
    stagger_s: float = _size(0.2, "mean spacing of workflow arrivals (s), concurrent and dynamic")
    history_limit: int | None = _size(None, "compact a workflow history past this many tokens; "
                                      "default: what keeps every prompt inside the context")
    peer_rounds: int = _size(8, "peer: rounds of planner -> executor -> expresser -> reviewer")
    concurrent_workflows: int = _size(16, "concurrent: workflows running at once")
    concurrent_rounds: int = _size(2, "concurrent: rounds of each workflow's agent cycle")
    dynamic_workflows: int = _size(16, "dynamic: undeclared workflows")
    dynamic_steps: int = _size(7, "dynamic: mean requests per workflow")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"trace size {f.name!r} must be a number, got {value!r}")
            low = 0 if f.name in ("seed", "think_s", "stagger_s") else 1
            if value < low:
                raise ValueError(f"trace size {f.name!r} must be >= {low}, got {value!r}")

    def replace(self, **changes: Any) -> TraceSizes:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


FULL = TraceSizes()
SMOKE = TraceSizes(vocab_size=256, system_tokens=192, input_tokens=16, output_tokens=4, think_s=0.01,
                   stagger_s=0.02, peer_rounds=2, concurrent_workflows=4, concurrent_rounds=2,
                   dynamic_workflows=4, dynamic_steps=3)


def history_limit_for(sizes: TraceSizes, context_len: int) -> int:
    """The history length past which generators compact, so the longest prompt (system prompt +
    full history + largest input) plus the largest output stays inside ``context_len``."""
    if sizes.history_limit is not None:
        return sizes.history_limit
    largest_io = math.ceil(1.5 * sizes.input_tokens) + math.ceil(1.5 * sizes.output_tokens)
    room = context_len - sizes.system_tokens - largest_io - CONTEXT_MARGIN
    if room < 16:
        raise ValueError(
            f"system_tokens {sizes.system_tokens} + inputs/outputs up to {largest_io} leave no room for "
            f"a workflow history in the model's context of {context_len} tokens; lower --system-tokens")
    return min(room, 8192)


def generator_params(kind: str, sizes: TraceSizes, context_len: int) -> dict[str, Any]:
    """Keyword arguments of ``context_forge.trace.generators.generate(kind, ...)``."""
    common: dict[str, Any] = {
        "seed": sizes.seed, "vocab_size": sizes.vocab_size, "name": f"e2e-{kind}",
        "system_tokens": sizes.system_tokens, "input_tokens": sizes.input_tokens,
        "output_tokens": sizes.output_tokens, "think_s": sizes.think_s,
        "history_limit": history_limit_for(sizes, context_len),
    }
    if kind == "peer":
        return common | {"rounds": sizes.peer_rounds}
    if kind == "concurrent":
        return common | {"workflows": sizes.concurrent_workflows, "rounds": sizes.concurrent_rounds,
                         "stagger_s": sizes.stagger_s}
    if kind == "dynamic":
        return common | {"workflows": sizes.dynamic_workflows, "steps": sizes.dynamic_steps,
                         "stagger_s": sizes.stagger_s}
    raise ValueError(f"unknown trace {kind!r}; choose from {', '.join(TRACE_KINDS)}")


@dataclass
class PreparedTrace:
    """A generated trace written to ``path``, with the numbers the sizing and the report use."""

    kind: str
    path: Path
    params: dict[str, Any]
    trace: Trace
    working_set_tokens: int
    max_request_tokens: int
    prompt_tokens: int

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "params": self.params, "requests": len(self.trace.requests),
            "workflows": len(self.trace.workflow_ids()), "declared_workflows": len(self.trace.workflows),
            "working_set_tokens": self.working_set_tokens, "max_request_tokens": self.max_request_tokens,
            "prompt_tokens": self.prompt_tokens,
        }


def prepare_trace(kind: str, sizes: TraceSizes, out_dir: Path, context_len: int, model_vocab: int) -> PreparedTrace:
    """Generates one trace (seeded), writes it to ``out_dir/<kind>.jsonl`` and checks it fits the model."""
    if sizes.vocab_size > model_vocab:
        raise ValueError(f"trace vocab_size {sizes.vocab_size} exceeds the model's vocabulary of {model_vocab} "
                         f"(the server would reject the token ids); lower --vocab-size")
    params = generator_params(kind, sizes, context_len)
    records = generate(kind, **params)
    trace = parse_trace((json.dumps(r) for r in records), name=kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}.jsonl"
    dump_trace(records, path, header=f"generated by benchmarks/e2e_workflows.py: {kind} {json.dumps(params)}")
    longest = max(trace.requests, key=lambda r: r.prompt_len + max(1, r.output_tokens))
    max_request = longest.prompt_len + max(1, longest.output_tokens)
    if max_request > context_len:
        raise ValueError(f"{kind}: request {longest.id!r} needs {max_request} tokens (prompt + output), "
                         f"more than the context of {context_len}; lower --system-tokens or --history-limit")
    return PreparedTrace(kind, path, params, trace, trace.working_set_tokens(), max_request,
                         sum(r.prompt_len for r in trace.requests))


@dataclass(frozen=True)
class PoolSizing:
    """Device and host KV pool of one server, and how they were chosen."""

    max_total_tokens: int
    hicache_ratio: float
    working_set_tokens: int
    max_request_tokens: int
    fraction: float
    rule: str

    @property
    def host_tokens(self) -> int:
        return int(self.max_total_tokens * self.hicache_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "host_tokens": self.host_tokens,
            "device_fraction_of_working_set": round(self.max_total_tokens / max(self.working_set_tokens, 1), 4),
        }


def _round_up(n: int, page: int) -> int:
    return -(-n // page) * page


def size_pool(traces: list[PreparedTrace], page_size: int, hicache_ratio: float, fraction: float = 0.4,
              override: int | None = None, request_factor: int = 2) -> PoolSizing:
    """The device pool for a server replaying ``traces`` (see the module docstring for the rule)."""
    if not traces:
        raise ValueError("size_pool needs at least one trace")
    if not 0 < fraction <= 1:
        raise ValueError(f"device fraction must be in (0, 1], got {fraction}")
    ws = max(t.working_set_tokens for t in traces)
    biggest = max(t.max_request_tokens for t in traces)
    if override is not None:
        if override < biggest:
            raise ValueError(f"--max-total-tokens {override} is smaller than the largest request "
                             f"({biggest} tokens, prompt + output); the server would reject it")
        return PoolSizing(_round_up(override, page_size), hicache_ratio, ws, biggest, fraction,
                          f"given on the command line (--max-total-tokens {override})")
    by_ws = _round_up(math.ceil(fraction * ws), page_size)
    by_request = _round_up(request_factor * biggest, page_size)
    tokens = max(by_ws, by_request)
    chosen = "fraction of the working set" if by_ws >= by_request else f"{request_factor} x largest request"
    rule = (f"max({fraction:g} x working set {ws} = {by_ws}, {request_factor} x largest request {biggest} = "
            f"{by_request}) rounded to {page_size}-token pages -> {tokens} ({chosen}); "
            f"host tier {hicache_ratio:g} x device = {int(tokens * hicache_ratio)} tokens")
    return PoolSizing(tokens, hicache_ratio, ws, biggest, fraction, rule)
