"""How soon an agent is invoked again by a workflow that is not live yet, learned online.

Users run the same agents again and again: every instance of a template calls its planner, every
round of a simulation calls some of the same personas, every ticket visits the same specialists.
The step graph of a live instance says nothing about the *next* instance, so this model learns,
per agent, from the stream of request starts:

- the clock: one tick per request start (an order-only clock: replicas that see the same requests
  in the same order learn the same values, which the SGLang backend's tensor-parallel ranks need);
- ``gap``: mean ticks between two workflows' first calls of the agent (how often a *new* workflow
  needs it), an exponential moving average;
- ``position``: mean step at which a workflow first calls the agent (its depth in a declared
  graph, its call index in an undeclared one);
- ``tau``: mean ticks between consecutive request starts of one workflow, which converts ticks to
  that workflow-local unit, steps.

``future_steps(a) = position + max(gap, elapsed) / tau``, where ``elapsed`` is the ticks since a
workflow last called ``a`` for the first time: a steady stream is expected one gap after the last
arrival, and an agent that has gone quiet for longer than its gap drifts away as the silence grows.
An agent that only one workflow has called has no gap of its own; it borrows the population's:
``first_gap / p``, where ``first_gap`` is the mean ticks from agents' first to second workflow and
``p`` the fraction of agents seen so far that a second workflow called (a population where few
agents recur ranks a newcomer far, one where most recur ranks it near its peers). Before any agent
recurred, such an agent is ``math.inf`` (not expected again).

Within one undeclared workflow an agent may also recur (the personas of a single-workflow
simulation): ``within_steps(w, a)`` is the workflow's own calls between its calls of ``a`` (moving
average), against the calls since the last one, in the same way. It is ``math.inf`` until the
workflow called the agent twice.

Values are rounded to a geometric grid (``quantize``), so a value and its change feed move only
when the estimate moves by a grid step; a heap of wake-up ticks republishes agents whose value
grows with silence.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from context_forge.workflow.changes import ChangeFeed, ChangeHub
from context_forge.workflow.scope import scope_key

__all__ = ["Recurrence", "quantize"]

GRID = 2 ** 0.25
"""Ratio between neighbouring values of the grid (about 19 %)."""


def quantize(value: float) -> float:
    """``value`` rounded to the grid: exact below 1, else the nearest power of ``GRID``."""
    if value < 1.0 or math.isinf(value):
        return value
    return GRID ** round(math.log(value, GRID))


def _next_grid(value: float) -> float:
    """The smallest value whose quantized form exceeds ``quantize(value)``."""
    k = round(math.log(max(value, 1.0), GRID))
    return GRID ** (k + 0.5)


@dataclass
class _Stream:
    """Arrivals of one agent: the tick of the latest, the moving average of their gaps, and the
    offset added to the expected wait (its step position)."""

    last: int
    gap: float = math.nan
    position: float = 0.0

    def value(self, now: int, tau: float, prior: float = math.nan) -> float:
        gap = prior if math.isnan(self.gap) else self.gap
        if math.isnan(gap):
            return math.inf
        wait = max(gap, float(now - self.last))
        return quantize(max(self.position + wait / tau, 0.0))

    def due(self, now: int, tau: float, prior: float = math.nan) -> int:
        """The first tick after ``now`` at which `value` may differ (it grows only with silence)."""
        gap = prior if math.isnan(self.gap) else self.gap
        current = self.value(now, tau, prior)
        wait = (_next_grid(current) - self.position) * tau
        return max(self.last + math.floor(max(gap, wait)) + 1, now + 1)


@dataclass
class _Workflow:
    calls: int = 0
    last_tick: int = 0
    first_call: set[str] = field(default_factory=set)
    agents: dict[str, _Stream] = field(default_factory=dict)
    """Per agent, its calls in this workflow, clocked by the workflow's own calls."""
    wakeups: list[tuple[int, str]] = field(default_factory=list)
    due: dict[str, int] = field(default_factory=dict)


class Recurrence:
    """Learned recurrence of agents across workflows (and within undeclared ones)."""

    def __init__(self, smoothing: float = 0.25) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        self.smoothing = smoothing
        self.clock = 0
        self.tau = 1.0
        self._tau_published = 1.0
        self._agents: dict[str, _Stream] = {}
        self._workflows: dict[str, _Workflow] = {}
        self._values: dict[str, float] = {}
        self._due: dict[str, int] = {}
        self._within: dict[tuple[str, str], float] = {}
        self._wakeups: list[tuple[int, str]] = []
        self._hub = ChangeHub()
        self._scoped_hub = ChangeHub()
        self._first_gap = math.nan
        self._once: set[str] = set()
        self._recurred = 0
        self._prior_published = math.nan

    # ---- learning ------------------------------------------------------------------------

    def observe(self, workflow_id: str, agent_id: str, position: float | None = None) -> None:
        """A request of ``agent_id`` started in ``workflow_id``; ``position`` is the agent's step in
        a declared graph (``None``: the workflow's call index is used)."""
        self.clock += 1
        now = self.clock
        wf = self._workflows.get(workflow_id)
        if wf is None:
            wf = self._workflows[workflow_id] = _Workflow(last_tick=now)
        else:
            self._ema_tau(now - wf.last_tick)
            wf.last_tick = now
        if agent_id not in wf.first_call:
            wf.first_call.add(agent_id)
            self._arrival(agent_id, float(wf.calls if position is None else position))
        wf.calls += 1
        self._within_call(workflow_id, wf, agent_id)
        self._wake(now)
        self._wake_within(workflow_id, wf)

    def finish(self, workflow_id: str) -> None:
        """The workflow ended: its within-workflow recurrences are dropped."""
        wf = self._workflows.pop(workflow_id, None)
        if wf is None:
            return
        for agent in wf.agents:
            if self._within.pop((workflow_id, agent), None) is not None:
                self._scoped_hub.publish(scope_key(workflow_id, agent))

    # ---- queries -------------------------------------------------------------------------

    def future_steps(self, agent_id: str) -> float:
        """Expected steps until a workflow not live yet calls the agent (``math.inf``: none)."""
        return self._values.get(agent_id, math.inf)

    priority = future_steps

    def within_steps(self, workflow_id: str, agent_id: str) -> float:
        """Expected calls of the workflow before it calls the agent again (``math.inf``: unknown)."""
        return self._within.get((workflow_id, agent_id), math.inf)

    def gap(self, agent_id: str) -> float:
        """Mean ticks between new workflows' first calls of the agent (``nan`` before two)."""
        stream = self._agents.get(agent_id)
        return math.nan if stream is None else stream.gap

    def subscribe(self) -> ChangeFeed:
        """Agents whose `future_steps` changed."""
        return self._hub.subscribe()

    def subscribe_scoped(self) -> ChangeFeed:
        """``scope_key(workflow, agent)`` whose `within_steps` changed."""
        return self._scoped_hub.subscribe()

    # ---- internals -----------------------------------------------------------------------

    def _ema(self, old: float, sample: float) -> float:
        return sample if math.isnan(old) else old + self.smoothing * (sample - old)

    def _ema_tau(self, gap: int) -> None:
        self.tau = max(1.0, self.tau + 0.05 * (gap - self.tau))
        if abs(self.tau - self._tau_published) > 0.25 * self._tau_published:
            self._tau_published = self.tau
            for agent in list(self._values):
                self._publish(agent)

    def _arrival(self, agent: str, position: float) -> None:
        stream = self._agents.get(agent)
        if stream is None:
            self._agents[agent] = _Stream(self.clock, position=position)
            self._once.add(agent)
            self._update_prior()
            self._publish(agent)
            return
        if math.isnan(stream.gap):
            self._once.discard(agent)
            self._recurred += 1
            self._first_gap = self._ema(self._first_gap, float(self.clock - stream.last))
            self._update_prior()
        stream.gap = self._ema(stream.gap, float(self.clock - stream.last))
        stream.position = self._ema(stream.position, position)
        stream.last = self.clock
        self._publish(agent)

    def _update_prior(self) -> None:
        """Republish the agents seen once when the population's prior gap moved by a quarter."""
        prior = self._prior()
        old = self._prior_published
        if math.isnan(old) or abs(prior - old) > 0.25 * old:
            self._prior_published = prior
            for agent in list(self._once):
                self._publish(agent)

    def _prior(self) -> float:
        """Expected ticks to a second workflow for an agent seen in one: ``first_gap / p``."""
        if self._recurred == 0:
            return math.nan
        share = self._recurred / (self._recurred + len(self._once))
        return self._first_gap / share

    def _publish(self, agent: str) -> None:
        stream = self._agents[agent]
        prior = self._prior_published
        value = stream.value(self.clock, self._tau_published, prior)
        if self._values.get(agent, math.inf) != value:
            self._values[agent] = value
            self._hub.publish(agent)
        if not math.isinf(value):
            due = stream.due(self.clock, self._tau_published, prior)
            if self._due.get(agent) != due:
                self._due[agent] = due
                heapq.heappush(self._wakeups, (due, agent))

    def _wake(self, now: int) -> None:
        """Republish agents whose silence has grown past their next grid step."""
        heap = self._wakeups
        while heap and heap[0][0] <= now:
            due, agent = heapq.heappop(heap)
            if self._due.get(agent) == due:
                del self._due[agent]
                self._publish(agent)

    def _within_call(self, workflow_id: str, wf: _Workflow, agent: str) -> None:
        stream = wf.agents.get(agent)
        if stream is None:
            wf.agents[agent] = _Stream(wf.calls, position=-1.0)
            return
        stream.gap = self._ema(stream.gap, float(wf.calls - stream.last))
        stream.last = wf.calls
        self._publish_within(workflow_id, wf, agent)

    def _publish_within(self, workflow_id: str, wf: _Workflow, agent: str) -> None:
        stream = wf.agents[agent]
        value = stream.value(wf.calls, 1.0)
        key = (workflow_id, agent)
        if self._within.get(key) != value:
            self._within[key] = value
            self._scoped_hub.publish(scope_key(workflow_id, agent))
        if not math.isinf(value):
            due = stream.due(wf.calls, 1.0)
            if wf.due.get(agent) != due:
                wf.due[agent] = due
                heapq.heappush(wf.wakeups, (due, agent))

    def _wake_within(self, workflow_id: str, wf: _Workflow) -> None:
        heap = wf.wakeups
        while heap and heap[0][0] <= wf.calls:
            due, agent = heapq.heappop(heap)
            if wf.due.get(agent) == due:
                del wf.due[agent]
                self._publish_within(workflow_id, wf, agent)
