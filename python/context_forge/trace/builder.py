"""Helpers that trace generators share: seeded draws, request ids, growing histories, ordering."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from context_forge.trace.records import DEFAULT_VOCAB_SIZE

__all__ = [
    "Prompt",
    "TraceBuilder",
    "TurnMeans",
    "agent_names",
    "arrival_times",
    "chain_agents",
    "derived_rng",
    "spread_size",
]

Prompt = Sequence[tuple[str, int]]


class TurnMeans(Protocol):
    """Mean sizes of a request (a generator's parameters): tokens in and out, think time."""

    input_tokens: int
    output_tokens: int
    think_s: float


def derived_rng(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible stream for one purpose of one seed.

    Separate streams keep, e.g., a transition table fixed when only the number of
    workflows drawn from it changes.
    """
    return random.Random(f"{seed}:{purpose}")


def spread_size(rng: random.Random, mean: int, spread: float = 0.5) -> int:
    """A token count drawn uniformly from ``mean * (1 +- spread)``, at least 1."""
    low = max(1, round(mean * (1 - spread)))
    high = max(low, round(mean * (1 + spread)))
    return rng.randint(low, high)


def arrival_times(rng: random.Random, count: int, mean_s: float) -> list[float]:
    """``count`` send times, the first at 0, spaced by exponential gaps of mean ``mean_s``.

    Rounded to milliseconds; a mean of 0 sends everything at 0.
    """
    times: list[float] = []
    t = 0.0
    for i in range(count):
        if i and mean_s > 0:
            t += rng.expovariate(1.0 / mean_s)
        times.append(round(t, 3))
    return times


def agent_names(pool: Sequence[str], prefix: str, n: int) -> list[str]:
    """``n`` agent names: the pool's first, then ``<prefix>-<i>``."""
    return [pool[i] if i < len(pool) else f"{prefix}-{i}" for i in range(n)]


def chain_agents(agents: Sequence[str]) -> list[dict[str, Any]]:
    """Agent entries of a ``workflow`` record in which each agent depends on the previous one."""
    return [
        {"agent_id": agent, "depends_on": [agents[i - 1]] if i else []}
        for i, agent in enumerate(agents)
    ]


class TraceBuilder:
    """Collects the records of one generated trace.

    Request ids are ``<workflow>/<agent>/<n>`` (``n`` counts that agent's requests in the
    workflow). Each workflow (or agent, for per-agent memories) has a history segment
    ``<owner>/history`` (or another label, e.g. ``<agent>/memory``) that grows as requests
    append their input and output to it, so later prompts extend earlier ones.
    :meth:`records` interleaves workflows by request ordinal (k-th requests of every
    workflow, then the (k+1)-th ...), which keeps every ``after`` id before its user as long
    as ``after`` edges stay inside a workflow. A generator whose ``after`` edges cross
    workflows sets :attr:`interleave` to False: requests then keep the order they were added
    in, which puts every ``after`` id first since a request can only wait on an existing id.
    """

    def __init__(
        self, name: str, seed: int, vocab_size: int = DEFAULT_VOCAB_SIZE, history_limit: int = 0
    ) -> None:
        self.rng = derived_rng(seed, "draws")
        self.history_limit = history_limit
        self.interleave = True
        self.meta = {"type": "meta", "version": 1, "name": name, "vocab_size": vocab_size}
        self._workflows: list[dict[str, Any]] = []
        self._streams: dict[str, list[dict[str, Any]]] = {}
        self._added: list[dict[str, Any]] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._history: dict[str, tuple[int, int]] = {}

    def size(self, mean: int, spread: float = 0.5) -> int:
        """A token count drawn uniformly from ``mean * (1 +- spread)``, at least 1."""
        return spread_size(self.rng, mean, spread)

    def think(self, mean_s: float) -> float:
        """An exponential think time with mean ``mean_s`` (0 stays 0), rounded to milliseconds."""
        return round(self.rng.expovariate(1.0 / mean_s), 3) if mean_s > 0 else 0.0

    def declare(self, workflow_id: str, agents: list[dict[str, Any]], repeat: bool = False) -> None:
        record: dict[str, Any] = {"type": "workflow", "workflow_id": workflow_id, "agents": agents}
        if repeat:
            record["repeat"] = True
        self._workflows.append(record)

    def history(self, owner: str, label: str = "history") -> list[tuple[str, int]]:
        """``owner``'s history segment ``<owner>/<label>`` as it stands (none before anything ran)."""
        epoch, length = self._history.get(owner, (0, 0))
        if not length:
            return []
        name = f"{owner}/{label}" if epoch == 0 else f"{owner}/{label}.{epoch}"
        return [(name, length)]

    def grow_history(self, owner: str, tokens: int) -> None:
        """Append ``tokens`` to ``owner``'s history.

        Past ``history_limit`` (when set) the history is compacted: a new segment
        ``<owner>/<label>.<epoch>`` starts, a summary a quarter of the limit long, so prompts
        stay bounded and the old prefix stops being reused, as after real context compaction.
        """
        epoch, length = self._history.get(owner, (0, 0))
        length += tokens
        if self.history_limit and length > self.history_limit:
            epoch, length = epoch + 1, max(1, self.history_limit // 4)
        self._history[owner] = (epoch, length)

    def next_id(self, workflow_id: str, agent_id: str) -> str:
        """The id the next request of ``agent_id`` in ``workflow_id`` will get."""
        return f"{workflow_id}/{agent_id}/{self._counts.get((workflow_id, agent_id), 0)}"

    def request(
        self,
        workflow_id: str,
        agent_id: str,
        prompt: Prompt,
        output_tokens: int,
        after: Sequence[str] = (),
        delay_s: float = 0.0,
        arrival_s: float = 0.0,
    ) -> str:
        """Add a request; returns its id."""
        rid = self.next_id(workflow_id, agent_id)
        self._counts[(workflow_id, agent_id)] = self._counts.get((workflow_id, agent_id), 0) + 1
        record: dict[str, Any] = {
            "type": "request",
            "id": rid,
            "workflow_id": workflow_id,
            "agent_id": agent_id,
            "after": list(after),
            "prompt": [{"segment": name, "tokens": n} for name, n in prompt if n > 0],
            "output_tokens": output_tokens,
        }
        if after:
            record["delay_s"] = delay_s
        else:
            record["arrival_s"] = arrival_s
        self._streams.setdefault(workflow_id, []).append(record)
        self._added.append(record)
        return rid

    def turn(
        self,
        workflow_id: str,
        agent_id: str,
        head: Prompt,
        owner: str,
        means: TurnMeans,
        after: Sequence[str] = (),
        arrival_s: float = 0.0,
        *,
        n_in: int | None = None,
        n_out: int | None = None,
        label: str = "history",
        grow: bool = True,
    ) -> str:
        """A request ``head`` + ``owner``'s history + its own input; returns its id.

        Input and output lengths not given (``n_in``, ``n_out``) are drawn around ``means``'
        means, then the think time when the request waits on ``after``. With ``grow`` both
        lengths are appended to the history, so the owner's next prompt extends this one.
        """
        n_in = n_in or self.size(means.input_tokens)
        n_out = n_out or self.size(means.output_tokens)
        delay_s = self.think(means.think_s) if after else 0.0
        own_input = (f"{self.next_id(workflow_id, agent_id)}/input", n_in)
        prompt = [*head, *self.history(owner, label), own_input]
        rid = self.request(workflow_id, agent_id, prompt, n_out, after, delay_s, arrival_s)
        if grow:
            self.grow_history(owner, n_in + n_out)
        return rid

    def records(self) -> list[dict[str, Any]]:
        """Meta, workflow records, then requests (interleaved across workflows or as added)."""
        out: list[dict[str, Any]] = [dict(self.meta), *self._workflows]
        if not self.interleave:
            return out + self._added
        streams = list(self._streams.values())
        longest = max((len(s) for s in streams), default=0)
        for k in range(longest):
            out.extend(s[k] for s in streams if k < len(s))
        return out
