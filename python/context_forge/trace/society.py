"""The ``rounds`` generator: a many-agent simulation whose every round is a declared workflow.

``--agents`` personas share a ``world`` prompt (``--world-tokens``, first in every prompt) and
each has its own ``sys/<agent>`` (``--system-tokens``). Round ``r`` is the workflow
``round-<r>``, declared with exactly the agents acting in it. Who acts changes every round:
an agent that acted last round acts again with probability ``--persistence``, the other slots
of the ``--active`` go to agents drawn without replacement by Zipf(``--zipf``) popularity (a
ranking drawn from its own seed stream). Agents of a round are independent, except that with
``--reactors`` K that many of them react: they depend on the round's other agents (declared
``depends_on``, ``after`` edges) and read their outputs. Every request of round ``r + 1`` waits
for all of round ``r``, so ``after`` edges cross workflows and requests are written in the order
they were made. Each agent has its own memory ``<agent>/memory`` that grows by the input and
output of every request it makes, so its prompt in a later round extends the one before.

Held-out shapes for evaluation come from the flags: e.g. ``--agents 1000 --zipf 0.3
--persistence 0`` (a flat crowd, hardly any reuse of a persona from one round to the next)
against ``--agents 12 --active 10 --persistence 0.9 --reactors 4`` (a small cast acting
together), under seeds not used for tuning.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from context_forge.trace.builder import TraceBuilder, derived_rng
from context_forge.trace.genparams import param, register_generator
from context_forge.trace.recurring import RecurringParams

__all__ = ["RoundsParams"]


@dataclass
class RoundsParams(RecurringParams):
    system_tokens: int = param(1536, "tokens of each agent's persona prompt", 1)
    think_s: float = param(0.2, "mean think time between dependent requests (s)", 0)
    agents: int = param(120, "agents of the simulated world", 1)
    rounds: int = param(60, "rounds; each is a workflow and waits for the previous one", 1)
    active: int = param(8, "agents acting per round", 1)
    zipf: float = param(1.1, "Zipf exponent of agent popularity", 0)
    persistence: float = param(0.5, "probability that an agent of the last round acts again", 0, 1)
    reactors: int = param(0, "agents per round that depend on the round's other agents", 0)
    world_tokens: int = param(1024, "tokens of the world prompt all agents share (0: none)", 0)


def _weighted_sample(b: TraceBuilder, weights: Sequence[float], k: int, taken: set[int]) -> list[int]:
    """``k`` indices not in ``taken``, drawn without replacement with probability ~ weight."""
    # Smallest Exp(1)/weight keys win.
    keys = {i: b.rng.expovariate(1.0) / w for i, w in enumerate(weights) if i not in taken}
    return heapq.nsmallest(k, keys, key=keys.__getitem__)


@register_generator("rounds", RoundsParams, "simulation rounds, each a declared workflow of its actors")
def _rounds(p: RoundsParams, b: TraceBuilder) -> None:
    if p.active > p.agents:
        raise ValueError(f"parameter 'active' ({p.active}) exceeds agents ({p.agents})")
    if p.reactors >= p.active:
        raise ValueError(f"parameter 'reactors' ({p.reactors}) must be below active ({p.active})")
    b.interleave = False
    width = len(str(p.agents - 1))
    agents = [f"agent-{i:0{width}d}" for i in range(p.agents)]
    ranks = list(range(1, p.agents + 1))
    derived_rng(p.seed, "popularity").shuffle(ranks)
    weights = [r ** -p.zipf for r in ranks]
    acted: list[int] = []
    previous: list[str] = []
    for r in range(p.rounds):
        kept = {i for i in acted if b.rng.random() < p.persistence}
        acted = sorted(kept | set(_weighted_sample(b, weights, p.active - len(kept), kept)))
        reacting = set(b.rng.sample(acted, p.reactors))
        first = [agents[i] for i in acted if i not in reacting]
        second = [agents[i] for i in acted if i in reacting]
        wid = f"round-{r}"
        b.declare(wid, [{"agent_id": a, "depends_on": []} for a in first]
                  + [{"agent_id": a, "depends_on": first} for a in second])
        outputs = [b.size(p.output_tokens) for _ in first]
        done = [_act(p, b, wid, a, previous, n_out=n) for a, n in zip(first, outputs)]
        reacted = [_act(p, b, wid, a, done, n_in=sum(outputs)) for a in second]
        previous = done + reacted


def _act(p: RoundsParams, b: TraceBuilder, wid: str, agent: str, after: list[str],
         **sizes: int) -> str:
    """One request of ``agent`` in round ``wid``; its memory grows by its input and output."""
    head = [("world", p.world_tokens), (f"sys/{agent}", p.system_tokens)]
    return b.turn(wid, agent, head, agent, p, after, label="memory", **sizes)
