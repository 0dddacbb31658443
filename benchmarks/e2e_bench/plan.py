"""What the end-to-end sweep replays: cells, their seeded traces, KV working sets, pools and servers.

A **cell** is (workload, system prompt size, device pool fraction), named like
``concurrent-8k-25``. Its trace is ``<workload>-<size>`` (the same trace for both pool fractions):

- ``peer``: one PEER workflow (planner -> executor -> expresser -> reviewer, declared, ``repeat``),
  ``peer_rounds`` rounds, each request waiting for the one before;
- ``concurrent``: ``concurrent_workflows`` declared workflows at once, each a cycle over
  ``agents_per_workflow`` of ``agents`` shared agents, ``concurrent_rounds`` rounds;
- ``dynamic``: ``dynamic_workflows`` undeclared workflows over ``agents`` agents routed by a
  hidden second-order table (``dynamic_steps`` requests each on average).

Every agent's system prompt has ``system_tokens``; a request adds a short input
(``system_tokens x input_per_system``) and asks for ``output_tokens``, so once the system prompts
are cached only a few per cent of prompt tokens are new (``new_fraction``: what even an unbounded
cache computes, from the radix-level footprint below).

**Working set** (``kv_footprint``): distinct KV tokens of the trace's radix tree, i.e. every
prompt inserted into a token trie. The history that the generators append lives under each agent's
own system prompt, so it counts once per agent branch (``Trace.working_set_tokens`` counts segments
once and under-states what a radix cache must hold).

**Pools.** A cell's device pool is ``fraction x working set`` rounded up to pages, but at least the
largest request plus two pages. The host tier holds ``host_margin x`` the largest working set the
server replays ("host tier holding it all"). The ``unbounded`` run is lru with a device pool holding
the whole working set (and every output) of the largest trace it replays: the ceiling of any policy.

**Servers.** Starting a server costs ~15 s on the H100, more than most replays, and the server
has no cache reset. So cells whose pools agree within ``group_tolerance`` share one server per run
(lru, kvflow, ...), all of them with the pool of the group's first (highest-priority) cell; their
actual fractions are reported. Each replay on a shared server gets its own namespace
(``namespaced``): segment names, workflow, agent and request ids are prefixed, so nothing one replay
cached can hit in the next, and agent statistics (predictor, recurrence) start from zero; what it
left behind is stale KV that every policy ranks below live KV. The first cell of each server
sees a fresh server.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from context_forge.trace.generators import generate
from context_forge.trace.reader import parse_trace
from context_forge.trace.records import Trace
from context_forge.trace.tokens import segment_tokens
from context_forge.trace.writer import dump_trace

WORKLOADS = ("peer", "concurrent", "dynamic")
UNBOUNDED = "unbounded"
CONTEXT_MARGIN = 16
"""Tokens kept free below the context length (a BOS or template token added by a server)."""


def _p(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Profile:
    """Sweep and trace sizes; every field is also a command-line flag (``--peer-rounds 4``)."""

    seed: int = _p(0, "seed of every trace generator")
    vocab_size: int = _p(32000, "token ids are drawn below this (must not exceed the model's vocabulary)")
    system_tokens: tuple[int, ...] = _p((2048, 8192, 16384), "system prompt sizes swept (comma-separated)")
    fractions: tuple[float, ...] = _p((0.25, 0.5), "device pool fractions of the working set swept")
    input_per_system: float = _p(1 / 256, "mean new input per request as a fraction of the system prompt")
    min_input_tokens: int = _p(4, "smallest mean input")
    output_tokens: int = _p(16, "mean output tokens per request (drawn within +-50 %)")
    think_s: float = _p(0.0, "mean think time between dependent requests (s)")
    stagger_s: float = _p(0.05, "mean spacing of workflow arrivals (s), concurrent and dynamic")
    peer_rounds: int = _p(3, "peer: rounds of planner -> executor -> expresser -> reviewer")
    concurrent_workflows: int = _p(16, "concurrent: workflows running at once")
    concurrent_rounds: int = _p(2, "concurrent: rounds of each workflow's agent cycle")
    agents: int = _p(6, "concurrent: shared agents; dynamic: agents the router picks from")
    agents_per_workflow: int = _p(4, "concurrent: shared agents each workflow cycles over")
    dynamic_workflows: int = _p(16, "dynamic: undeclared workflows")
    dynamic_steps: int = _p(8, "dynamic: mean requests per workflow (drawn within +-50 %)")
    host_margin: float = _p(1.3, "host tier = this x the largest working set on the server")
    group_tolerance: float = _p(0.08, "cells whose pools differ by at most this share a server")
    targets: tuple[str, ...] = _p(("peer-16k-25", "concurrent-8k-25", "dynamic-8k-25"),
                                  "the target cells (run first): single, concurrent, dynamic")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if f.name == "targets":
                if len(values) != 3:
                    raise ValueError("targets: name three cells (single, concurrent, dynamic workflows)")
                continue
            if not values:
                raise ValueError(f"{f.name}: give at least one value")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"{f.name} must be numeric, got {v!r}")
                low = 0 if f.name in ("seed", "think_s", "stagger_s", "group_tolerance") else 1
                if f.name in ("fractions", "input_per_system"):
                    if not 0 < v <= 1:
                        raise ValueError(f"{f.name} must be in (0, 1], got {v!r}")
                elif v < low:
                    raise ValueError(f"{f.name} must be >= {low}, got {v!r}")
        if self.host_margin < 1.05:
            raise ValueError(f"host_margin must be >= 1.05 (the host tier holds the whole working set), "
                             f"got {self.host_margin}")
        if self.agents_per_workflow > self.agents:
            raise ValueError(f"agents_per_workflow ({self.agents_per_workflow}) exceeds agents ({self.agents})")

    def replace(self, **changes: Any) -> "Profile":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def input_tokens(self, system: int) -> int:
        return max(self.min_input_tokens, round(system * self.input_per_system))


FULL = Profile()
SMOKE = Profile(vocab_size=256, system_tokens=(64, 128), input_per_system=1 / 16, min_input_tokens=2,
                output_tokens=3, stagger_s=0.01, peer_rounds=2, concurrent_workflows=3, concurrent_rounds=2,
                agents=3, agents_per_workflow=2, dynamic_workflows=3, dynamic_steps=3, group_tolerance=0.7,
                targets=("peer-128-25", "concurrent-64-25", "dynamic-64-25"))
SMOKE_CELLS = ("peer-128-25", "concurrent-64-25", "dynamic-64-25", "peer-64-50")
"""The smoke run's cells: the three targets and one more; a loose ``group_tolerance`` puts all four
on one server per run (their actual pool fractions differ, which the smoke run does not mind)."""


def size_label(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def trace_name(workload: str, system: int) -> str:
    return f"{workload}-{size_label(system)}"


@dataclass(frozen=True)
class Cell:
    workload: str
    system_tokens: int
    fraction: float

    @property
    def trace(self) -> str:
        return trace_name(self.workload, self.system_tokens)

    @property
    def name(self) -> str:
        return f"{self.trace}-{round(self.fraction * 100)}"


def all_cells(profile: Profile) -> list[Cell]:
    """Every cell of the sweep in run priority: the target cells, then the rest by system prompt
    size (the middle size first, then larger, then smaller), pool fraction and workload."""
    cells = [Cell(w, s, f) for s in profile.system_tokens for f in profile.fractions for w in WORKLOADS]
    sizes = sorted(profile.system_tokens)
    middle = sizes[len(sizes) // 2]
    size_rank = {s: (0 if s == middle else 1 if s > middle else 2, abs(s - middle)) for s in sizes}

    def rank(c: Cell) -> tuple:
        if c.name in profile.targets:
            return (0, profile.targets.index(c.name))
        return (1, size_rank[c.system_tokens], c.fraction, WORKLOADS.index(c.workload))
    return sorted(cells, key=rank)


def select_cells(profile: Profile, patterns: Iterable[str] | None) -> list[Cell]:
    """The cells matching ``patterns`` (names or shell globs; ``targets`` = the target cells), in
    priority order. Raises ``ValueError`` for a pattern that matches nothing."""
    cells = all_cells(profile)
    if patterns is None:
        return cells
    chosen: set[str] = set()
    for pattern in patterns:
        names = list(profile.targets) if pattern == "targets" else [
            c.name for c in cells if fnmatch.fnmatchcase(c.name, pattern)]
        names = [n for n in names if any(c.name == n for c in cells)]
        if not names:
            raise ValueError(f"--cells {pattern!r} matches no cell; cells are "
                             f"{', '.join(c.name for c in cells)}")
        chosen.update(names)
    return [c for c in cells if c.name in chosen]


# ----------------------------------------------------------------------------- traces
def generator_params(workload: str, system: int, profile: Profile, context_len: int) -> dict[str, Any]:
    """Keyword arguments of ``context_forge.trace.generators.generate(workload, ...)``."""
    n_in = profile.input_tokens(system)
    room = context_len - system - math.ceil(1.5 * n_in) - math.ceil(1.5 * profile.output_tokens) - CONTEXT_MARGIN
    if room < 16:
        raise ValueError(f"a {system}-token system prompt leaves no room for a workflow history in the "
                         f"model's context of {context_len} tokens; lower --system-tokens")
    common: dict[str, Any] = {
        "seed": profile.seed, "vocab_size": profile.vocab_size, "name": trace_name(workload, system),
        "system_tokens": system, "input_tokens": n_in, "output_tokens": profile.output_tokens,
        "think_s": profile.think_s, "history_limit": min(room, 8192),
    }
    if workload == "peer":
        return common | {"rounds": profile.peer_rounds}
    if workload == "concurrent":
        return common | {"workflows": profile.concurrent_workflows, "rounds": profile.concurrent_rounds,
                         "shared_agents": profile.agents, "agents_per_workflow": profile.agents_per_workflow,
                         "private_agents": 0, "stagger_s": profile.stagger_s}
    if workload == "dynamic":
        return common | {"workflows": profile.dynamic_workflows, "agents": profile.agents,
                         "steps": profile.dynamic_steps, "stagger_s": profile.stagger_s}
    raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")


@dataclass(frozen=True)
class Footprint:
    """Radix-level KV numbers of a trace (token counts)."""

    working_set: int
    """Distinct KV tokens: the size of the trace's prompt trie."""
    new_tokens: int
    """Prompt tokens no earlier prompt shares: what an unbounded cache computes (cold included)."""
    warm_tokens: int
    """Tokens of the distinct first segments (the agents' system prompts) the warm-up computes."""
    prompt_tokens: int
    max_request: int
    """Largest prompt + output of one request."""


def kv_footprint(records: list[dict[str, Any]]) -> Footprint:
    """Footprint of generated records by a segment-level trie (exact up to token collisions
    between differently named segments). Segment ``S`` of ``n`` tokens is a prefix of ``S`` of
    ``m > n`` tokens; a prompt that ends a segment early diverges there from longer uses of it."""
    # node: {segment name: [longest length, {length: child node}]}
    root: dict[str, list[Any]] = {}
    total = new = prompt_total = biggest = 0
    first: dict[str, int] = {}
    for rec in records:
        if rec.get("type") != "request":
            continue
        prompt = [(s["segment"], int(s["tokens"])) for s in rec["prompt"]]
        length = sum(n for _, n in prompt)
        prompt_total += length
        biggest = max(biggest, length + max(1, int(rec.get("output_tokens", 0))))
        if prompt:
            name, n = prompt[0]
            first[name] = max(first.get(name, 0), n)
        matched, node = 0, root
        for name, n in prompt:
            entry = node.get(name)
            if entry is None:
                break
            if n > entry[0]:
                matched += entry[0]
                break
            matched += n
            if n not in entry[1]:
                break
            node = entry[1][n]
        new += length - matched
        node = root
        for name, n in prompt:
            entry = node.setdefault(name, [0, {}])
            if n > entry[0]:
                total += n - entry[0]
                entry[0] = n
            node = entry[1].setdefault(n, {})
    return Footprint(total, new, sum(first.values()), prompt_total, biggest)


@dataclass
class PreparedTrace:
    """One generated trace (written to ``path``) with its footprint."""

    name: str
    workload: str
    system_tokens: int
    path: Path
    params: dict[str, Any]
    records: list[dict[str, Any]]
    trace: Trace
    footprint: Footprint

    @property
    def new_fraction(self) -> float:
        """Prompt tokens an unbounded cache still computes after the warm-up, per prompt token."""
        fp = self.footprint
        return max(fp.new_tokens - fp.warm_tokens, 0) / max(fp.prompt_tokens, 1)

    @property
    def output_tokens(self) -> int:
        return sum(max(1, r.output_tokens) for r in self.trace.requests)

    def describe(self) -> dict[str, Any]:
        fp = self.footprint
        return {
            "path": str(self.path), "workload": self.workload, "system_tokens": self.system_tokens,
            "params": self.params, "requests": len(self.trace.requests),
            "workflows": len(self.trace.workflow_ids()), "declared_workflows": len(self.trace.workflows),
            "working_set_tokens": fp.working_set, "new_tokens": fp.new_tokens, "warm_tokens": fp.warm_tokens,
            "prompt_tokens": fp.prompt_tokens, "max_request_tokens": fp.max_request,
            "output_tokens": self.output_tokens, "new_fraction_after_warm_up": round(self.new_fraction, 4),
            "segment_working_set_tokens": self.trace.working_set_tokens(),
        }


def prepare_trace(workload: str, system: int, profile: Profile, out_dir: Path, context_len: int,
                  model_vocab: int) -> PreparedTrace:
    """Generates one trace (seeded), writes it to ``out_dir/<name>.jsonl``, checks it fits the model."""
    if profile.vocab_size > model_vocab:
        raise ValueError(f"trace vocab_size {profile.vocab_size} exceeds the model's vocabulary of "
                         f"{model_vocab} (the server would reject the token ids); lower --vocab-size")
    params = generator_params(workload, system, profile, context_len)
    records = generate(workload, **params)
    name = trace_name(workload, system)
    trace = parse_trace((json.dumps(r) for r in records), name=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.jsonl"
    dump_trace(records, path, header=f"generated by benchmarks/e2e_workflows.py: {workload} {json.dumps(params)}")
    fp = kv_footprint(records)
    if fp.max_request > context_len:
        raise ValueError(f"{name}: a request needs {fp.max_request} tokens (prompt + output), more than "
                         f"the context of {context_len}; lower --system-tokens")
    return PreparedTrace(name, workload, system, path, params, records, trace, fp)


def namespaced(records: list[dict[str, Any]], ns: str) -> Trace:
    """The trace with every segment name, workflow, agent and request id prefixed by ``ns``: the
    same shape and sizes, tokens and names no other namespace shares."""
    out = []
    def wid(x: str) -> str:
        return f"{ns}.{x}"
    for rec in records:
        r = dict(rec)
        kind = r.get("type")
        if kind == "meta":
            r["name"] = f"{ns}.{r.get('name', '')}"
        elif kind == "workflow":
            r["workflow_id"] = wid(r["workflow_id"])
            r["agents"] = [dict(a, agent_id=wid(a["agent_id"]), depends_on=[wid(d) for d in a.get("depends_on", [])])
                           for a in r["agents"]]
        elif kind == "request":
            r["id"] = wid(r["id"])
            r["workflow_id"] = wid(r["workflow_id"])
            if r.get("agent_id"):
                r["agent_id"] = wid(r["agent_id"])
            r["after"] = [wid(a) for a in r.get("after", [])]
            r["prompt"] = [dict(s, segment=f"{ns}|{s['segment']}") for s in r["prompt"]]
        out.append(r)
    return parse_trace((json.dumps(r) for r in out), name=f"{ns}.{records[0].get('name', '')}")


def warm_prompts(trace: Trace) -> list[list[int]]:
    """Token ids of the trace's distinct first segments (the agents' system prompts), longest use
    of each: the warm-up computes them once, outside any workflow, before the measured replay."""
    longest: dict[str, int] = {}
    for req in trace.requests:
        if req.prompt:
            seg = req.prompt[0]
            longest[seg.name] = max(longest.get(seg.name, 0), seg.tokens)
    return [segment_tokens(name, n, trace.vocab_size) for name, n in longest.items()]


# ----------------------------------------------------------------------------- pools and servers
def pages(tokens: float, page_size: int) -> int:
    return max(1, math.ceil(tokens / page_size))


@dataclass(frozen=True)
class CellPool:
    """The device pool a cell wants: ``fraction x working set`` in pages, at least ``min_pages``."""

    cell: Cell
    working_set: int
    wanted_pages: int
    min_pages: int


def cell_pool(cell: Cell, trace: PreparedTrace, page_size: int) -> CellPool:
    ws = trace.footprint.working_set
    low = pages(trace.footprint.max_request, page_size) + 2
    return CellPool(cell, ws, max(pages(cell.fraction * ws, page_size), low), low)


@dataclass
class ServerGroup:
    """Cells replayed on one server per run: the pool of the first (highest-priority) cell."""

    pool_pages: int
    members: list[CellPool]

    def fits(self, candidate: CellPool, tolerance: float) -> bool:
        return (abs(candidate.wanted_pages - self.pool_pages) <= tolerance * self.pool_pages
                and self.pool_pages >= candidate.min_pages)

    @property
    def cells(self) -> list[Cell]:
        return [m.cell for m in self.members]


def group_cells(pools: list[CellPool], tolerance: float) -> list[ServerGroup]:
    """Greedy in priority order: a cell joins the first group whose pool is within ``tolerance`` of
    its own (and holds its largest request), else starts a group. Groups keep priority order."""
    groups: list[ServerGroup] = []
    for p in pools:
        for g in groups:
            if g.fits(p, tolerance):
                g.members.append(p)
                break
        else:
            groups.append(ServerGroup(p.wanted_pages, [p]))
    return groups


def host_pages_for(traces: Iterable[PreparedTrace], page_size: int, margin: float) -> int:
    """Host tier pages: ``margin x`` the largest working set (plus outputs) among ``traces``."""
    return pages(margin * max(t.footprint.working_set + t.output_tokens for t in traces), page_size)


def unbounded_pages(traces: Iterable[PreparedTrace], page_size: int) -> int:
    """A device pool holding the largest trace's whole working set, every output and a partial page
    per request, with 10 % to spare (stale KV of earlier replays is evicted first by lru)."""
    return max(pages(1.1 * (t.footprint.working_set + t.output_tokens + page_size * len(t.trace.requests)),
                     page_size) + 2 for t in traces)


def hicache_ratio(host_pages: int, device_pages: int) -> str:
    """``hicache_ratio`` giving at least ``host_pages`` host pages (the server takes
    ``int(device_pages x ratio)``); always > 1 as the server requires."""
    ratio = max(host_pages / device_pages, 1.01)
    return f"{(math.ceil(ratio * 1e6) + 1) / 1e6:.6f}"
