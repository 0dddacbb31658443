"""Agent priorities (expected steps until an agent runs) from the step graph, the predictor, or both;
`context_forge.workflow.live.LiveWorkflows` builds them over the live workflows."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection

from context_forge.workflow.arrivals import ArrivalOrder
from context_forge.workflow.changes import ChangeFeed, ChangeHub
from context_forge.workflow.errors import WorkflowError
from context_forge.workflow.minmap import AgentRateSum
from context_forge.workflow.predictor import MarkovPredictor
from context_forge.workflow.recurrence import Recurrence, quantize
from context_forge.workflow.scope import scope_key, split_scope
from context_forge.workflow.tracker import StepTracker

__all__ = [
    "PRIORITY_NAMES",
    "AgentPriority",
    "BlendedPriority",
    "ChangeFeed",
    "GraphPriority",
    "AnyInstancePriority",
    "PredictorPriority",
    "ScopedPriority",
]

PRIORITY_NAMES = ("graph", "predictor", "blended", "any_graph", "any_blended", "scoped_graph",
                  "scoped_blended")


class AgentPriority(ABC):
    """Expected steps until an agent runs: lower is more urgent, `math.inf` = not expected."""

    @abstractmethod
    def priority(self, agent_id: str) -> float:
        """The agent's current priority."""

    @abstractmethod
    def subscribe(self) -> ChangeFeed:
        """A new feed of agents whose priority changed since that feed's last drain."""


class GraphPriority(AgentPriority):
    """The tracker's steps-to-execution of declared graphs."""

    def __init__(self, tracker: StepTracker) -> None:
        self.tracker = tracker

    def priority(self, agent_id: str) -> float:
        return self.tracker.steps(agent_id)

    def subscribe(self) -> ChangeFeed:
        return self.tracker.subscribe()


class PredictorPriority(AgentPriority):
    """Steps until some live dynamic workflow calls the agent, from the predictor's expectations.

    Each workflow ``w`` expects the agent at ``v_w`` steps (`MarkovPredictor.reach_steps_all`: the
    distance to its first call divided by the chance it comes, 0 while it runs there); read as a
    rate of ``trust_w / (v_w + 1)`` calls per step, with the predictor's measured `trust` in the
    workflow's predictions, the workflows' rates add up, and the agent's priority is
    ``1 / sum - 1`` (``math.inf`` when no workflow expects it), on the `quantize` grid. For one
    trusted workflow that is ``v_w``; an agent that several tickets may call next ranks nearer
    than one that a single ticket might call, which the minimum over workflows could not tell
    apart, and guesses from contexts whose predictions have not come true count less. Measured
    with ``benchmarks/rank_sweep.py`` against the minimum over workflows (pbkv, device hits over
    Belady's): ``tickets-24-long`` 40 % 0.872 -> 0.918, ``tickets/agentic`` 20 % 0.920 -> 0.951,
    ``tickets-40-noisy`` 40 % 0.710 -> 0.728 and 20 % 0.926 -> 0.914, ``tickets-16-fast`` 40 %
    0.967 -> 0.935, ``tickets/defaults`` 40 % 0.979 -> 0.974 (each still at or above kvflow's),
    target lines missed 19 -> 16. Without the trust factor noisy 20 % fell to 0.856; combining
    the workflows' chances instead (``1 - prod(1 - p_w)``, with the chance-weighted mean distance)
    missed 20 lines (``tickets-24-long`` 40 % 0.867, below kvflow).

    Each workflow's contributions are recomputed only when `refresh` is called for it (on its
    requests); other workflows keep the values computed at their last refresh even though the
    shared model has learned since. Agents with a running request in the workflow count 0.
    """

    def __init__(self, predictor: MarkovPredictor, horizon: int = 8) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise WorkflowError(f"horizon must be an integer >= 0, got {horizon!r}")
        self.predictor = predictor
        self.horizon = horizon
        self._contrib: dict[str, dict[str, float]] = {}
        self._trust: dict[str, float] = {}
        self._rates = AgentRateSum()
        self._hub = ChangeHub()
        self._scoped_hub = ChangeHub()

    def refresh(self, workflow_id: str, running: Collection[str] = ()) -> None:
        """Recompute the workflow's contributions from the predictor's current state."""
        table = self.predictor.reach_steps_all(workflow_id, self.horizon)
        for agent in running:
            table[agent] = 0.0
        trust = self.predictor.trust(workflow_id)
        retrust = self._trust.get(workflow_id) != trust
        self._trust[workflow_id] = trust
        old = self._contrib.get(workflow_id, {})
        for agent, value in table.items():
            if retrust or old.get(agent) != value:
                self._update(agent, workflow_id, value, old.get(agent) != value)
        for agent in old.keys() - table.keys():
            self._update(agent, workflow_id, None, True)
        self._contrib[workflow_id] = table

    def remove(self, workflow_id: str) -> None:
        """The workflow ended: it stops contributing."""
        for agent in self._contrib.pop(workflow_id, {}):
            self._update(agent, workflow_id, None, True)
        self._trust.pop(workflow_id, None)

    def workflows(self) -> list[str]:
        return list(self._contrib)

    def value(self, workflow_id: str, agent_id: str) -> float:
        """The workflow's own expected steps for the agent (`math.inf` when it has none)."""
        table = self._contrib.get(workflow_id)
        return math.inf if table is None else table.get(agent_id, math.inf)

    def subscribe_scoped(self) -> ChangeFeed:
        """A feed of `scope_key(workflow_id, agent_id)` whose per-workflow value changed."""
        return self._scoped_hub.subscribe()

    def priority(self, agent_id: str) -> float:
        rate = self._rates.total(agent_id)
        if rate == math.inf:
            return 0.0
        if rate <= 1e-12:
            return math.inf
        return quantize(max(1.0 / rate - 1.0, 0.0))

    def subscribe(self) -> ChangeFeed:
        return self._hub.subscribe()

    def _update(self, agent: str, workflow_id: str, value: float | None, moved: bool) -> None:
        if moved and self._scoped_hub.active:
            self._scoped_hub.publish(scope_key(workflow_id, agent))
        before = self.priority(agent)
        if value is None or value == math.inf:
            rate = None
        elif value <= 0.0:
            rate = math.inf
        else:
            rate = self._trust.get(workflow_id, 1.0) / (value + 1.0)
        self._rates.set(agent, workflow_id, rate)
        if self.priority(agent) != before:
            self._hub.publish(agent)


class BlendedPriority(AgentPriority):
    """Weighted blend of a graph priority g and a predictor priority q, with weight w:

        p = w * g + (1 - w) * q   when both are finite,
        p = g  or  p = q          when only that one is finite,
        p = inf                   when neither is.
    """

    def __init__(self, graph: AgentPriority, predictor: AgentPriority, weight: float = 0.6) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise WorkflowError(f"weight must be a number in [0, 1], got {weight!r}")
        self.graph = graph
        self.predictor = predictor
        self.weight = float(weight)

    def priority(self, agent_id: str) -> float:
        g = self.graph.priority(agent_id)
        q = self.predictor.priority(agent_id)
        if g == math.inf:
            return q
        if q == math.inf:
            return g
        return self.weight * g + (1.0 - self.weight) * q

    def subscribe(self) -> ChangeFeed:
        return ChangeFeed(sources=(self.graph.subscribe(), self.predictor.subscribe()))


NOT_LIVE_FLOOR = 1.5
"""The nearest a workflow that is not live yet may rank an agent, in steps: it must arrive before
its first agent runs, so its learned guess never ties with, or beats, what a live instance's graph
says runs at its next step (a certainty; property (b) of ``tests/test_cache_rank_properties.py``
found the tie, which LRU order then broke against the live instance)."""


class AnyInstancePriority(AgentPriority):
    """Steps until *any* instance calls the agent: the sooner of a live instance (``live``) and a
    workflow not live yet (``future``, the learned `Recurrence`, at least ``NOT_LIVE_FLOOR``)."""

    def __init__(self, live: AgentPriority, future: Recurrence) -> None:
        self.live = live
        self.future = future

    def priority(self, agent_id: str) -> float:
        return min(self.live.priority(agent_id), max(self.future.future_steps(agent_id), NOT_LIVE_FLOOR))

    def subscribe(self) -> ChangeFeed:
        return ChangeFeed(sources=(self.live.subscribe(), self.future.subscribe()))


class ScopedPriority(AgentPriority):
    """Priority of a `scope_key(workflow_id, agent_id)`: the agent's steps within that workflow.

    With ``weight`` None only the declared graph counts (``g`` = the instance's steps for the agent,
    `math.inf` once the instance no longer needs it); otherwise the workflow's own predicted steps
    ``q`` are blended in as in `BlendedPriority`: ``w * g + (1 - w) * q`` when both are finite, else
    the finite one, else `math.inf`. With ``recurrence`` (the predictive variant), an undeclared
    workflow's key ranks by the agent's learned recurrence within that workflow
    (`Recurrence.within_steps`) instead: a private branch (a ticket's history under one
    specialist) is reused only when that agent comes back to the same workflow, which the
    predictor's next-agent odds, spread over every agent, overstate (measured on the ``tickets``
    shape: 0.84 of Belady with them, 0.95 without); the predictor still ranks the shared nodes
    through ``fallback``. A key without a workflow falls
    back to `fallback` (for the cache: the agent's next call by any instance, live or expected).
    """

    def __init__(self, tracker: StepTracker, predicted: PredictorPriority, fallback: AgentPriority,
                 weight: float | None = None, recurrence: Recurrence | None = None,
                 arrivals: ArrivalOrder | None = None) -> None:
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not 0 <= weight <= 1):
            raise WorkflowError(f"weight must be a number in [0, 1], got {weight!r}")
        self.tracker = tracker
        self.predicted = predicted
        self.fallback = fallback
        self.weight = weight
        self.recurrence = recurrence
        self.arrivals = arrivals

    def priority(self, agent_id: str) -> float:
        wf, agent = split_scope(agent_id)
        if wf is None:
            return self.fallback.priority(agent)
        g = self.tracker.instance_value(wf, agent)
        if self.weight is None:
            return g
        if self.recurrence is not None and wf not in self.tracker:
            running = self.predicted.value(wf, agent) == 0.0
            q = 0.0 if running else self.recurrence.within_steps(wf, agent)
        else:
            q = self.predicted.value(wf, agent)
        if g == math.inf:
            return q
        if q == math.inf:
            return g
        return self.weight * g + (1.0 - self.weight) * q

    def declared(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is a scoped key of a declared (tracked) instance."""
        wf, _ = split_scope(agent_id)
        return wf is not None and wf in self.tracker

    def arrival(self, agent_id: str) -> int | None:
        """Arrival number of the earliest unfinished request under the key (`ArrivalOrder.first`):
        among KV that waiting requests need, the order in which they will be admitted."""
        return self.arrivals.first(agent_id) if self.arrivals is not None else None

    def subscribe(self) -> ChangeFeed:
        sources = [self.tracker.subscribe_scoped(), self.fallback.subscribe()]
        if self.weight is not None:
            sources.append(self.predicted.subscribe_scoped())
        if self.recurrence is not None:
            sources.append(self.recurrence.subscribe_scoped())
        if self.arrivals is not None:
            sources.append(self.arrivals.subscribe())
        return ChangeFeed(sources=sources)
