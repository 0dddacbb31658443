"""Generators of recurring workloads: the same agents called again by workflow after workflow.

Real users rarely run one workflow: they run one template many times, or route a stream of
tickets through the same specialists. What an eviction policy has to keep across workflows is
then the agents' shared prefixes, while each workflow's own context is reused only inside it.
Two kinds (registered in ``context_forge.trace.generators``; the third recurring kind,
``rounds``, lives in ``context_forge.trace.society``):

- ``template``: ``--instances`` instances of ONE declared template, each its own workflow
  ``tpl-<i>`` with the same graph, arriving ``--spacing-s`` apart on average (exponential) so
  that several run at once. ``--shape fanout``: planner -> ``--workers`` parallel workers ->
  reducer -> critic; ``--shape chain``: a chain of ``--chain-length`` agents. A prompt is
  ``team/preamble`` (shared by every agent; ``--preamble-tokens 0`` drops it) + ``sys/<agent>``
  (shared by every instance; lengths drawn per agent within ``--system-spread`` of
  ``--system-tokens`` from a stream of their own) + the instance's ``<wf>/task`` + its growing
  ``<wf>/history`` + the request's input. Workers read the plan from the history; their outputs
  are the reducer's input. ``--rounds`` > 1 repeats the template inside each instance.
- ``tickets``: ``--tickets`` undeclared workflows ``ticket-<i>`` (no workflow record) arriving
  ``--spacing-s`` apart on average (exponential), each routed between ``--specialists`` shared
  agents. A ticket starts at ``triage``, which hands it to a specialist drawn from a hidden
  intent mix; from there a hidden second-order Markov chain routes it: the preferred successor
  of the last two agents (a table drawn from its own seed stream; with probability ``--closing``
  an entry is a terminal agent), taken with probability ``--determinism``, another specialist
  otherwise. It ends at one of the last ``--terminals`` specialists or after ``--max-steps``
  requests. Prompt = ``sys/<specialist>`` + the ticket's growing ``<ticket>/history`` + input.

Held-out evaluation: every size is a flag and every draw comes from the seed, so an evaluator
can score a policy on seeds and shapes that were not used to tune it, e.g. ``template --shape
chain --chain-length 12 --spacing-s 0.2`` (long chains, many in flight) against ``--workers 32
--instances 8 --spacing-s 20`` (wide, one at a time), or ``tickets --specialists 40
--determinism 0.3 --closing 0.1`` (long, barely predictable routes) against ``--specialists 3
--max-steps 2``. System prompt lengths, routing tables and arrival times each use their own
stream, so changing a count does not redraw the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from context_forge.trace.builder import (
    Prompt,
    TraceBuilder,
    agent_names,
    arrival_times,
    chain_agents,
    derived_rng,
    spread_size,
)
from context_forge.trace.genparams import SizeParams, param, register_generator

__all__ = ["RecurringParams", "TemplateParams", "TicketsParams", "SHAPES", "SPECIALISTS"]

SHAPES = ("fanout", "chain")
CHAIN_ROLES = ("planner", "researcher", "drafter", "editor", "reviewer", "publisher")
SPECIALISTS = (
    "triage", "billing", "refunds", "tech-support", "accounts",
    "shipping", "returns", "fraud", "escalation", "resolution",
)


@dataclass
class RecurringParams(SizeParams):
    """Sizes shared by the recurring kinds: agent calls with short inputs and outputs."""

    input_tokens: int = param(200, "mean new input tokens per request", 1)
    output_tokens: int = param(100, "mean output tokens per request", 1)


@dataclass
class TemplateParams(RecurringParams):
    system_tokens: int = param(2560, "mean tokens of an agent's system prompt", 1)
    shape: str = param("fanout", "template: fanout (planner, workers, reducer, critic) or chain")
    instances: int = param(40, "instances of the template (one workflow each)", 1)
    workers: int = param(4, "fanout: parallel workers", 1)
    chain_length: int = param(5, "chain: agents in the chain", 1)
    rounds: int = param(2, "passes through the template per instance (2: one revision pass)", 1)
    system_spread: float = param(0.6, "system prompt lengths span system_tokens * (1 +- this)", 0, 1)
    preamble_tokens: int = param(512, "tokens of team/preamble before every system prompt (0: none)", 0)
    task_tokens: int = param(300, "mean tokens of an instance's task", 1)
    spacing_s: float = param(1.25, "mean spacing of instance arrivals (s, exponential)", 0)


def _template_graph(p: TemplateParams) -> list[dict[str, Any]]:
    if p.shape == "chain":
        return chain_agents(agent_names(CHAIN_ROLES, "stage", p.chain_length))
    workers = [f"worker-{j}" for j in range(p.workers)]
    return [
        {"agent_id": "planner", "depends_on": []},
        *({"agent_id": w, "depends_on": ["planner"]} for w in workers),
        {"agent_id": "reducer", "depends_on": workers},
        {"agent_id": "critic", "depends_on": ["reducer"]},
    ]


@register_generator("template", TemplateParams, "overlapping instances of one declared template")
def _template(p: TemplateParams, b: TraceBuilder) -> None:
    if p.shape not in SHAPES:
        raise ValueError(f"parameter 'shape' must be one of {', '.join(SHAPES)}, got {p.shape!r}")
    graph = _template_graph(p)
    agents = [a["agent_id"] for a in graph]
    sizes = derived_rng(p.seed, "template-system")
    system = {a: spread_size(sizes, p.system_tokens, p.system_spread) for a in agents}
    preamble = ("team/preamble", p.preamble_tokens)
    arrivals = arrival_times(derived_rng(p.seed, "arrivals"), p.instances, p.spacing_s)
    for i, arrival in enumerate(arrivals):
        wid = f"tpl-{i}"
        b.declare(wid, graph, repeat=p.rounds > 1)
        task = (f"{wid}/task", b.size(p.task_tokens))
        heads = {a: [preamble, (f"sys/{a}", system[a]), task] for a in agents}
        _instance(p, b, wid, heads, arrival)


def _instance(p: TemplateParams, b: TraceBuilder, wid: str, heads: dict[str, Prompt],
              arrival: float) -> None:
    """The requests of one template instance; ``heads`` maps an agent to its shared prefix."""

    def turn(agent: str, after: list[str], **sizes: Any) -> str:
        return b.turn(wid, agent, heads[agent], wid, p, after, arrival, **sizes)

    workers = list(heads)[1:-2]
    last: list[str] = []
    for _ in range(p.rounds):
        if p.shape == "chain":
            for agent in heads:
                last = [turn(agent, last)]
            continue
        planner = turn("planner", last)
        outputs = [b.size(p.output_tokens) for _ in workers]
        done = [turn(w, [planner], n_out=n, grow=False) for w, n in zip(workers, outputs)]
        last = [turn("critic", [turn("reducer", done, n_in=sum(outputs))])]


@dataclass(frozen=True)
class _Router:
    """The hidden routing of tickets: triage's intent mix, then a second-order table."""

    nexts: dict[str, list[str]]
    intents: list[str]
    intent_weights: list[float]
    preferred: dict[tuple[str | None, str], str]

    @classmethod
    def draw(
        cls, table: random.Random, agents: list[str], terminal: set[str], closing: float
    ) -> _Router:
        """A routing drawn from ``table``.

        Intent weights are uniform in [0, 1) over the non-terminal specialists. Every other
        state's preferred successor is a terminal agent with probability ``closing``, else a
        specialist other than the previous one (no hand-back while another one exists).
        """
        nexts = {a: [x for x in agents[1:] if x != a] for a in agents}
        intents = [x for x in nexts["triage"] if x not in terminal] or nexts["triage"]
        weights = [table.random() for _ in intents]
        preferred: dict[tuple[str | None, str], str] = {}
        for cur in (a for a in agents[1:] if a not in terminal and nexts[a]):
            closers = [x for x in nexts[cur] if x in terminal]
            for prev in (x for x in agents if x != cur):
                others = [x for x in nexts[cur] if x not in terminal and x != prev]
                closes = bool(closers) and table.random() < closing
                preferred[(prev, cur)] = table.choice(closers if closes else others or nexts[cur])
        return cls(nexts, intents, weights, preferred)

    def next(self, rng: random.Random, prev: str | None, cur: str, determinism: float) -> str | None:
        """The agent after ``prev``, ``cur`` (None: the ticket is closed)."""
        if prev is None:
            return rng.choices(self.intents, self.intent_weights)[0]
        choice = self.preferred.get((prev, cur))
        if choice is not None and rng.random() >= determinism:
            choice = rng.choice([x for x in self.nexts[cur] if x != choice] or [choice])
        return choice


@dataclass
class TicketsParams(RecurringParams):
    think_s: float = param(1.0, "mean think time between a ticket's requests (s)", 0)
    tickets: int = param(100, "tickets (undeclared workflows)", 1)
    specialists: int = param(10, "shared specialist agents, triage first", 2)
    terminals: int = param(2, "the last this many specialists close a ticket", 0)
    max_steps: int = param(8, "most requests of a ticket", 1)
    closing: float = param(0.4, "probability that a table entry sends the ticket to a terminal", 0, 1)
    determinism: float = param(0.85, "probability of the table's preferred successor", 0, 1)
    spacing_s: float = param(2.5, "mean spacing of ticket arrivals (s, exponential)", 0)


@register_generator("tickets", TicketsParams, "undeclared tickets routed between shared specialists")
def _tickets(p: TicketsParams, b: TraceBuilder) -> None:
    if p.terminals >= p.specialists:
        raise ValueError(
            f"parameter 'terminals' ({p.terminals}) must be below specialists ({p.specialists}): "
            "triage never closes a ticket"
        )
    agents = agent_names(SPECIALISTS, "specialist", p.specialists)
    terminal = set(agents[len(agents) - p.terminals:])
    router = _Router.draw(derived_rng(p.seed, "tickets-table"), agents, terminal, p.closing)
    arrivals = arrival_times(derived_rng(p.seed, "arrivals"), p.tickets, p.spacing_s)
    for i, arrival in enumerate(arrivals):
        wid = f"ticket-{i}"
        prev: str | None = None
        agent: str | None = "triage"
        last: list[str] = []
        while agent is not None and len(last) < p.max_steps:
            head = [(f"sys/{agent}", p.system_tokens)]
            last.append(b.turn(wid, agent, head, wid, p, last[-1:], arrival))
            prev, agent = agent, router.next(b.rng, prev, agent, p.determinism)
