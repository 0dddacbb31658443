"""Seeded generators of synthetic multi-agent workload traces, and the ``context-forge-gen`` CLI.

``generate(kind, **params) -> list[dict]`` returns the records of one trace (meta, workflow
records, requests in an order the reader accepts); ``main(argv)`` is the CLI:
``context-forge-gen KIND --out FILE [--flag value ...]`` (flags are the parameter names with
dashes). Every kind takes ``seed`` (0), ``vocab_size`` (32000) and ``name`` (meta name, default
``<kind>-s<seed>``) and is deterministic for its parameters.

Shape shared by the five original kinds: a prompt is ``sys/<agent>`` (the agent's system prompt, shared by
every workflow that uses the agent) + the workflow's ``<wf>/history`` + a per-request input,
so an agent's next prompt extends its previous one. History grows by each request's input and
output; past ``history_limit`` (8192) it is compacted into a new segment a quarter as long.
Inputs and outputs are drawn within +-50 % of their means; think times (``delay_s``) are
exponential. Token counts are plain tokens, unrelated to any KV page size.

Sizes. Working set = distinct prompt tokens (``Trace.working_set_tokens``). Defaults aim at a
few hundred thousand tokens for the multi-workflow kinds: several times a 25 % slice of an
80 GB device holding Llama-3-8B KV (128 KiB a token, ~120k tokens). Prompts stay under ~13k
tokens. At the defaults with seed 0:

- ``peer``: one PEER cycle planner -> executor -> expresser -> reviewer, declared as a chain
  with ``repeat``; 16 rounds; 4096-token system prompts; each request waits for the previous
  one. 64 requests, working set ~73k tokens (scale with ``--rounds``, ``--system-tokens``).
- ``concurrent``: 16 declared workflows x 4 rounds, each a cycle over 3 of 6 shared agents
  (``sys/<agent>``, 2048 tokens) plus 1 private agent ``wf-<i>/<role>`` (1024 tokens) at a
  random place; arrivals ~2 s apart, 1 s mean think time. 256 requests, ~0.22M tokens.
- ``fanout``: 8 declared workflows x 4 rounds of planner -> ``--width`` 8 workers ->
  aggregator. Workers share ``sys/worker`` + history + the round's plan; the aggregator's input
  is the workers' outputs. 320 requests, ~0.23M tokens.
- ``dynamic``: 32 workflows of 6-18 requests and NO workflow record. Over 8 agents, the next
  agent is the preferred successor of the last two (a table drawn from the seed) with
  probability 0.85, another agent otherwise. ~390 requests, ~0.3M tokens.
- ``simulation``: 120 agents ``npc-<i>``, 60 steps; each step activates 4 agents drawn by
  Zipf(1.1) popularity and waits for the whole previous step. Prompt = shared ``sim/world``
  (1024) + the agent's own system prompt (1024) + its own growing memory + input. No workflow
  record by default: which agents run is random, so a static graph could only say "any agent,
  any step"; ``--declare-graph`` writes exactly that (all agents optional, independent,
  ``repeat``). 240 requests, ~0.15M tokens.

Recurring kinds (``trace/recurring.py``, ``trace/society.py``): the same agents again and again,
workflow after workflow.

- ``template``: 40 instances ``tpl-<i>`` of ONE declared template, each its own workflow:
  ``--shape fanout`` planner -> 4 workers -> reducer -> critic, or ``--shape chain`` of 5 agents;
  arrivals exponential, 1.25 s apart on average (4-6 instances in flight when replayed). Prompt =
  ``team/preamble`` (512, all agents) + ``sys/<agent>`` (1024-4096 per agent, shared by every
  instance) + ``<wf>/task`` (300) + history + input (200; outputs 100); each instance runs the
  template twice (``--rounds 2``: a revision pass). 560 requests, ~0.23M tokens (chain: 400
  requests, ~0.21M).
- ``rounds``: 120 agents, 60 rounds, each declared as workflow ``round-<r>`` holding its 8 actors
  (Zipf(1.1) popularity, an actor of the last round acts again with probability 0.5; optional
  ``--reactors`` depending on the others). Prompt = ``world`` (1024) + ``sys/<agent>`` (1536) +
  ``<agent>/memory`` + input (200; outputs 100); every request of a round waits for the whole
  previous round. 480 requests, ~0.34M tokens.
- ``tickets``: 100 tickets ``ticket-<i>``, NO workflow record, over 10 specialists (2048-token
  ``sys/<agent>``): triage first, then a hidden second-order chain until a terminal agent or 8
  requests; inputs 200, outputs 100; arrivals exponential, 2.5 s apart on average (3-4 in
  flight). 440 requests, ~0.21M tokens.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from context_forge.trace import recurring, society  # noqa: F401  (register template, tickets, rounds)
from context_forge.trace.builder import TraceBuilder, chain_agents, derived_rng
from context_forge.trace.genparams import (
    GENERATORS,
    SizeParams,
    build_cli_parser,
    make_params,
    param,
    register_generator,
)
from context_forge.trace.reader import parse_trace
from context_forge.trace.writer import TraceWriter

__all__ = ["GENERATORS", "generate", "main"]

ROLES = ("planner", "researcher", "coder", "tester", "writer", "reviewer", "analyst", "designer")
PRIVATE_ROLES = ("critic", "verifier", "summarizer", "editor")


def _names(prefix: str, pool: Sequence[str], n: int) -> list[str]:
    """``n`` agent names: the pool's first, then ``<prefix>-<i>``."""
    return [pool[i] if i < len(pool) else f"{prefix}-{i}" for i in range(n)]


def _step(b: TraceBuilder, p: SizeParams, wid: str, agent: str, after: str | None, arrival: float,
          system_tokens: int | None = None) -> str:
    """One request shaped ``sys/<agent>`` + history + input, after ``after``; grows the history."""
    n_in, n_out = b.size(p.input_tokens), b.size(p.output_tokens)
    system = (f"sys/{agent}", system_tokens or p.system_tokens)
    prompt = [system, *b.history(wid), (f"{b.next_id(wid, agent)}/input", n_in)]
    rid = b.request(wid, agent, prompt, n_out, after=[after] if after else [],
                    delay_s=b.think(p.think_s), arrival_s=arrival)
    b.grow_history(wid, n_in + n_out)
    return rid


@dataclass
class PeerParams(SizeParams):
    rounds: int = param(16, "rounds of the planner -> executor -> expresser -> reviewer cycle", 1)
    system_tokens: int = param(4096, "tokens of each agent's system prompt", 1)


@register_generator("peer", PeerParams, "one PEER-style cyclic workflow with large system prompts")
def _peer(p: PeerParams, b: TraceBuilder) -> None:
    agents = ["planner", "executor", "expresser", "reviewer"]
    wid = "peer-0"
    b.declare(wid, chain_agents(agents), repeat=True)
    prev: str | None = None
    for _ in range(p.rounds):
        for agent in agents:
            prev = _step(b, p, wid, agent, prev, 0.0)


@dataclass
class ConcurrentParams(SizeParams):
    workflows: int = param(16, "concurrent workflows", 1)
    rounds: int = param(4, "rounds of each workflow's agent cycle", 1)
    shared_agents: int = param(6, "agents shared by all workflows (pool)", 1)
    agents_per_workflow: int = param(3, "shared agents each workflow uses", 1)
    private_agents: int = param(1, "private agents per workflow (wf-<i>/<role>)", 0)
    private_system_tokens: int = param(1024, "tokens of a private agent's system prompt", 1)
    think_s: float = param(1.0, "mean think time between dependent requests (s)", 0)
    stagger_s: float = param(2.0, "mean spacing of workflow arrivals (s)", 0)


@register_generator("concurrent", ConcurrentParams, "many workflows over shared and private agents")
def _concurrent(p: ConcurrentParams, b: TraceBuilder) -> None:
    if p.agents_per_workflow > p.shared_agents:
        raise ValueError(
            f"agents_per_workflow ({p.agents_per_workflow}) exceeds shared_agents ({p.shared_agents})"
        )
    pool = _names("shared", ROLES, p.shared_agents)
    for w in range(p.workflows):
        wid = f"wf-{w}"
        picked = sorted(b.rng.sample(range(len(pool)), p.agents_per_workflow))
        order: list[str] = [pool[i] for i in picked]
        for role in _names("private", PRIVATE_ROLES, p.private_agents):
            order.insert(b.rng.randint(1, len(order)), f"{wid}/{role}")
        b.declare(wid, chain_agents(order), repeat=p.rounds > 1)
        arrival = round(w * p.stagger_s + b.rng.uniform(0, p.stagger_s / 2), 3)
        prev: str | None = None
        for _ in range(p.rounds):
            for agent in order:
                private = agent.startswith(f"{wid}/")
                tokens = p.private_system_tokens if private else p.system_tokens
                prev = _step(b, p, wid, agent, prev, arrival, tokens)


@dataclass
class FanoutParams(SizeParams):
    workflows: int = param(8, "workflows", 1)
    rounds: int = param(4, "planner -> workers -> aggregator rounds per workflow", 1)
    width: int = param(8, "parallel workers per round", 1)
    plan_tokens: int = param(512, "mean tokens of a round's plan, shared by its workers", 1)
    stagger_s: float = param(1.0, "spacing of workflow arrivals (s)", 0)


@register_generator("fanout", FanoutParams, "fan-out / fan-in: planner, K parallel workers, aggregator")
def _fanout(p: FanoutParams, b: TraceBuilder) -> None:
    workers = [f"worker-{j}" for j in range(p.width)]
    agents = [{"agent_id": "planner", "depends_on": []}]
    agents += [{"agent_id": w, "depends_on": ["planner"]} for w in workers]
    agents.append({"agent_id": "aggregator", "depends_on": workers})
    for w in range(p.workflows):
        wid = f"fan-{w}"
        b.declare(wid, agents, repeat=p.rounds > 1)
        arrival = round(w * p.stagger_s, 3)
        prev: str | None = None
        for r in range(p.rounds):
            planner = _step(b, p, wid, "planner", prev, arrival)
            plan = [(f"{wid}/plan/{r}", b.size(p.plan_tokens))]
            done, results = [], 0
            for worker in workers:
                n_in, n_out = b.size(p.input_tokens), b.size(p.output_tokens)
                prompt = [("sys/worker", p.system_tokens), *b.history(wid), *plan,
                          (f"{b.next_id(wid, worker)}/input", n_in)]
                done.append(b.request(wid, worker, prompt, n_out, after=[planner],
                                      delay_s=b.think(p.think_s)))
                results += n_out
            n_out = b.size(p.output_tokens)
            prompt = [("sys/aggregator", p.system_tokens), *b.history(wid),
                      (f"{b.next_id(wid, 'aggregator')}/input", results)]
            prev = b.request(wid, "aggregator", prompt, n_out, after=done, delay_s=b.think(p.think_s))
            b.grow_history(wid, results + n_out)


@dataclass
class DynamicParams(SizeParams):
    workflows: int = param(32, "workflows (none is declared)", 1)
    agents: int = param(8, "agents the router chooses from", 2)
    steps: int = param(12, "mean requests per workflow (drawn within +-50%)", 1)
    determinism: float = param(0.85, "probability of the preferred successor", 0)
    stagger_s: float = param(1.0, "mean spacing of workflow arrivals (s)", 0)


@register_generator("dynamic", DynamicParams, "undeclared workflows routed by a second-order table")
def _dynamic(p: DynamicParams, b: TraceBuilder) -> None:
    if p.determinism > 1:
        raise ValueError(f"determinism must be in [0, 1], got {p.determinism}")
    agents = _names("agent", ROLES, p.agents)
    table_rng = derived_rng(p.seed, "dynamic-table")
    states = [(a, c) for a in [None, *agents] for c in [None, *agents] if c is not None or a is None]
    preferred = {s: table_rng.choice([x for x in agents if x != s[1]]) for s in states}
    for w in range(p.workflows):
        wid = f"dyn-{w}"
        arrival = round(w * p.stagger_s + b.rng.uniform(0, p.stagger_s / 2), 3)
        state: tuple[str | None, str | None] = (None, None)
        prev: str | None = None
        for _ in range(b.size(p.steps)):
            agent = preferred[state]
            if b.rng.random() >= p.determinism:
                agent = b.rng.choice([x for x in agents if x != agent and x != state[1]] or [agent])
            prev = _step(b, p, wid, agent, prev, arrival)
            state = (state[1], agent)


@dataclass
class SimulationParams(SizeParams):
    agents: int = param(120, "agents of the simulated world", 1)
    steps: int = param(60, "simulation steps; each waits for the previous one", 1)
    active: int = param(4, "agents activated per step", 1)
    zipf: float = param(1.1, "Zipf exponent of agent popularity", 0)
    system_tokens: int = param(1024, "tokens of each agent's own system prompt", 1)
    world_tokens: int = param(1024, "tokens of the world prompt all agents share", 0)
    input_tokens: int = param(128, "mean new input tokens per request", 1)
    output_tokens: int = param(128, "mean output tokens per request", 1)
    think_s: float = param(0.2, "mean think time between dependent requests (s)", 0)
    declare_graph: bool = param(False, "declare every agent (optional, independent, repeat)")


@register_generator("simulation", SimulationParams, "many agents, sparse Zipf-popular activation")
def _simulation(p: SimulationParams, b: TraceBuilder) -> None:
    if p.active > p.agents:
        raise ValueError(f"active ({p.active}) exceeds agents ({p.agents})")
    wid = "sim"
    width = len(str(p.agents - 1))
    agents = [f"npc-{i:0{width}d}" for i in range(p.agents)]
    if p.declare_graph:
        b.declare(wid, [{"agent_id": a, "depends_on": [], "optional": True} for a in agents], True)
    ranks = list(range(1, p.agents + 1))
    derived_rng(p.seed, "popularity").shuffle(ranks)
    weights = [r ** -p.zipf for r in ranks]
    previous: list[str] = []
    for t in range(p.steps):
        # Weighted sampling without replacement: smallest Exp(1)/weight keys win.
        keys = [b.rng.expovariate(1.0) / w for w in weights]
        current = []
        for i in heapq.nsmallest(p.active, range(p.agents), key=keys.__getitem__):
            agent = agents[i]
            n_in, n_out = b.size(p.input_tokens), b.size(p.output_tokens)
            prompt = [(f"{wid}/world", p.world_tokens), (f"sys/{agent}", p.system_tokens),
                      *b.history(agent), (f"{wid}/{t}/{agent}/input", n_in)]
            current.append(b.request(wid, agent, prompt, n_out, after=previous,
                                     delay_s=b.think(p.think_s)))
            b.grow_history(agent, n_in + n_out)
        previous = current


def generate(kind: str, **params: Any) -> list[dict[str, Any]]:
    """Records (dicts) of one trace of ``kind``; parameters as the module docstring lists."""
    p = make_params(kind, params)
    limit = getattr(p, "history_limit", 0)
    b = TraceBuilder(p.name or f"{kind}-s{p.seed}", p.seed, p.vocab_size, limit)
    GENERATORS[kind].build(p, b)
    return b.records()


def main(argv: Sequence[str] | None = None) -> int:
    """``context-forge-gen KIND --out FILE [--param value ...]``; prints a summary to stderr."""
    parser = build_cli_parser("context-forge-gen", __doc__.split("\n", 1)[0])
    args = vars(parser.parse_args(argv))
    kind, out = args.pop("kind"), args.pop("out")
    try:
        records = generate(kind, **args)
    except ValueError as exc:
        print(f"context-forge-gen: error: {exc}", file=sys.stderr)
        return 2
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
             for k, v in args.items() if v is not False and v != ""]
    header = f"generated by context-forge-gen {kind} {' '.join(flags)}"
    with TraceWriter(sys.stdout if out == "-" else out) as writer:
        writer.comment(header)
        writer.write_all(records)
    trace = parse_trace(json.dumps(r) for r in records)
    print(
        f"{kind}: {len(trace.requests)} requests, {len(trace.workflow_ids())} workflows "
        f"({len(trace.workflows)} declared), working set {trace.working_set_tokens()} tokens"
        f" -> {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
