"""Steps-to-execution of agents over many live workflow instances, updated incrementally."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from context_forge.workflow.changes import ChangeFeed, ChangeHub
from context_forge.workflow.errors import (
    DuplicateWorkflowError,
    UnknownAgentError,
    UnknownWorkflowError,
    WorkflowError,
)
from context_forge.workflow.graph import WorkflowGraph
from context_forge.workflow.minmap import CountedMin
from context_forge.workflow.scope import scope_key

__all__ = ["StepTracker"]


@dataclass
class _Instance:
    """One live instance. `running` and `done` are disjoint; `values` holds the agents that
    still contribute (every agent not done; for repeat graphs, done agents too)."""

    graph: WorkflowGraph
    instance_id: str = ""
    running: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    values: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    last_round: bool = False
    starts: int = 0
    """Requests of any agent started in the instance so far."""
    finished_at: dict[str, int] = field(default_factory=dict)
    """Per agent, `starts` when it last became done."""


class StepTracker:
    """Per-agent steps-to-execution, the minimum over the live instances that will still invoke it.

    In one instance an agent is running (started, not finished: 0 steps), done, or pending. A
    pending agent takes 0 steps when every dependency is done, else 1 + the maximum over its
    unfinished dependencies (the longest remaining path). Done agents of a plain graph contribute
    nothing. In a `repeat` graph a done agent runs again next round:
    steps = remaining + depth, where remaining = 1 + max over the round's unfinished agents
    (the steps until the round ends) and depth is its step in a fresh round. When every agent of a
    repeat round is done, a new round begins; starting an agent that is already done in the
    current round also begins a new round (an optional agent was skipped), while in a plain graph
    it re-runs that agent.

    Several concurrent requests of one agent in one instance are counted: the agent stays running
    until each start has been matched by a finish. Finishing an agent that is done and not running
    changes nothing. `report_finished` is the idempotent entry for a client's own reports (events):
    it never counts a finish twice, also across the start of a new repeat round.

    Incremental: a report touches only the reporting instance's affected agents (the agent and its
    descendants; every agent of a repeat instance). Per agent, the values of all instances live in
    a value -> count multiset with a cached minimum, so the cost does not grow with the number of
    live instances. Subscribers (`subscribe()`) learn which agents' `steps` changed.
    """

    def __init__(self) -> None:
        self._instances: dict[str, _Instance] = {}
        self._mins: dict[str, CountedMin] = {}
        self._optional_counts: dict[str, int] = {}
        self._hub = ChangeHub()
        self._scoped_hub = ChangeHub()

    # ---- reports -------------------------------------------------------------------------

    def register(self, instance_id: str, graph: WorkflowGraph) -> None:
        """Start tracking a new instance of `graph`; every agent begins pending."""
        if not isinstance(instance_id, str) or not instance_id:
            raise WorkflowError(f"instance_id must be a non-empty string, got {instance_id!r}")
        if not isinstance(graph, WorkflowGraph):
            raise TypeError(f"graph must be a WorkflowGraph, got {type(graph).__name__}")
        if instance_id in self._instances:
            raise DuplicateWorkflowError(instance_id)
        inst = _Instance(graph, instance_id)
        self._instances[instance_id] = inst
        self._refresh(inst, graph.order)

    def agent_started(self, instance_id: str, agent_id: str) -> None:
        """A request of `agent_id` began in the instance."""
        inst = self._agent_instance(instance_id, agent_id)
        graph = inst.graph
        inst.starts += 1
        if agent_id in inst.done:
            inst.running[agent_id] = 1
            if graph.repeat:
                self._new_round(inst)
            else:
                inst.done.discard(agent_id)
                self._refresh(inst, graph.affected_map[agent_id])
            return
        count = inst.running.get(agent_id, 0)
        inst.running[agent_id] = count + 1
        if count == 0:
            self._refresh(inst, graph.affected_map[agent_id])

    def agent_finished(self, instance_id: str, agent_id: str) -> None:
        """A request of `agent_id` completed in the instance."""
        inst = self._agent_instance(instance_id, agent_id)
        count = inst.running.get(agent_id, 0)
        if count > 1:
            inst.running[agent_id] = count - 1
            return
        if count == 0 and agent_id in inst.done:
            return
        inst.running.pop(agent_id, None)
        inst.done.add(agent_id)
        inst.finished_at[agent_id] = inst.starts
        graph = inst.graph
        if graph.repeat and not inst.last_round and len(inst.done) == len(graph):
            self._new_round(inst)
        else:
            self._refresh(inst, graph.affected_map[agent_id])

    def report_finished(self, instance_id: str, agent_id: str) -> str | None:
        """A client says the agent finished (a skipped optional agent, or work done elsewhere):
        mark it done unless that would count one finish twice. Returns None when applied, else
        why nothing changed: the agent has a request running (its finish will mark it done), it
        is already done in the current round, or, in a repeat graph, its finish completed the
        previous round and no request has started in the instance since (so this event repeats
        that finish instead of reporting one in the new round)."""
        inst = self._agent_instance(instance_id, agent_id)
        if inst.running.get(agent_id, 0):
            return (f"agent {agent_id!r} has a request running in workflow {instance_id!r}; "
                    "the server marks it done when that request finishes")
        if agent_id in inst.done:
            return f"agent {agent_id!r} already finished in the current round of workflow {instance_id!r}"
        if inst.graph.repeat and inst.finished_at.get(agent_id) == inst.starts:
            return (f"agent {agent_id!r} already finished in workflow {instance_id!r} and no request has "
                    "started there since; a second report would mark it done in the next round too")
        self.agent_finished(instance_id, agent_id)
        return None

    def set_last_round(self, instance_id: str, last: bool = True) -> None:
        """Mark the current round of a repeat instance as its last (or not): its done agents stop
        counting, as in a plain graph. Starting a done agent still begins a new round, which
        clears the mark."""
        inst = self._instance(instance_id)
        if inst.last_round != last and inst.graph.repeat:
            inst.last_round = last
            self._refresh(inst, inst.graph.order)

    def done_in_round(self, instance_id: str, agent_id: str) -> bool:
        """Whether the agent already finished in the instance's current round."""
        return agent_id in self._instance(instance_id).done

    def rounds_started(self, instance_id: str) -> int:
        """Rounds of the instance that have begun: completed ones plus the current one if any of
        its agents ran (1 for a plain graph that ran anything)."""
        inst = self._instance(instance_id)
        return inst.rounds + (1 if inst.done or inst.running else 0)

    def finish(self, instance_id: str) -> None:
        """The instance ended: it stops counting for every agent."""
        inst = self._instance(instance_id)
        for agent in list(inst.values):
            self._set(inst, agent, None)
        del self._instances[instance_id]

    # ---- queries -------------------------------------------------------------------------

    def steps(self, agent_id: str) -> float:
        """Minimum steps-to-execution over live instances; `math.inf` when none will invoke it."""
        m = self._mins.get(agent_id)
        return math.inf if m is None else float(m.min)

    def is_optional(self, agent_id: str) -> bool:
        """True when every live instance that will still invoke the agent declares it optional."""
        m = self._mins.get(agent_id)
        return m is not None and self._optional_counts.get(agent_id, 0) == m.size

    def live_instances(self) -> list[str]:
        """Ids of registered, not yet finished instances, in registration order."""
        return list(self._instances)

    def instance_steps(self, instance_id: str, agent_id: str) -> float:
        """Steps-to-execution of the agent within one instance (`math.inf` once it is done for good)."""
        value = self._agent_instance(instance_id, agent_id).values.get(agent_id)
        return math.inf if value is None else float(value)

    def graph_of(self, instance_id: str) -> WorkflowGraph:
        return self._instance(instance_id).graph

    def completed_rounds(self, instance_id: str) -> int:
        """Rounds completed so far by a repeat instance (always 0 for a plain graph)."""
        return self._instance(instance_id).rounds

    def subscribe(self) -> ChangeFeed:
        """A feed of agents whose `steps` value changed since its last drain."""
        return self._hub.subscribe()

    def subscribe_scoped(self) -> ChangeFeed:
        """A feed of `scope_key(instance_id, agent_id)` whose per-instance value changed."""
        return self._scoped_hub.subscribe()

    def instance_value(self, instance_id: str, agent_id: str) -> float:
        """Like `instance_steps`, but `math.inf` (no error) for an unknown instance or agent."""
        inst = self._instances.get(instance_id)
        value = None if inst is None else inst.values.get(agent_id)
        return math.inf if value is None else float(value)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._instances

    def __len__(self) -> int:
        return len(self._instances)

    # ---- internals -----------------------------------------------------------------------

    def _instance(self, instance_id: str) -> _Instance:
        try:
            return self._instances[instance_id]
        except (KeyError, TypeError):
            raise UnknownWorkflowError(instance_id) from None

    def _agent_instance(self, instance_id: str, agent_id: str) -> _Instance:
        inst = self._instance(instance_id)
        if agent_id not in inst.graph:
            raise UnknownAgentError(agent_id, f"workflow instance {instance_id!r}")
        return inst

    def _new_round(self, inst: _Instance) -> None:
        inst.done.clear()
        inst.rounds += 1
        inst.last_round = False
        self._refresh(inst, inst.graph.order)

    def _refresh(self, inst: _Instance, agents: Iterable[str]) -> None:
        """Recompute `agents` (topologically ordered) of one instance, then, for repeat graphs,
        the done agents, whose value depends on the whole round."""
        graph = inst.graph
        deps_of = graph.dependency_map
        done, running, values = inst.done, inst.running, inst.values
        repeat = graph.repeat and not inst.last_round
        for agent in agents:
            if agent in done:
                if not repeat:
                    self._set(inst, agent, None)
                continue
            if running.get(agent):
                new = 0
            else:
                longest = -1
                for dep in deps_of[agent]:
                    if dep not in done:
                        v = values[dep]
                        longest = max(longest, v)
                new = longest + 1
            self._set(inst, agent, new)
        if repeat and done:
            remaining = 1 + max(v for a, v in values.items() if a not in done)
            depth = graph.depth_map
            for agent in done:
                self._set(inst, agent, remaining + depth[agent])

    def _set(self, inst: _Instance, agent: str, new: int | None) -> None:
        values = inst.values
        old = values.get(agent)
        if old == new:
            return
        if self._scoped_hub.active:
            self._scoped_hub.publish(scope_key(inst.instance_id, agent))
        m = self._mins.get(agent)
        if m is None:
            m = self._mins[agent] = CountedMin()
        before = m.min
        optional = agent in inst.graph.optional_agents
        if old is None:
            if optional:
                self._optional_counts[agent] = self._optional_counts.get(agent, 0) + 1
        else:
            m.remove(old)
        if new is None:
            del values[agent]
            if optional:
                self._optional_counts[agent] -= 1
        else:
            values[agent] = new
            m.add(new)
        after = m.min
        if m.size == 0:
            del self._mins[agent]
            self._optional_counts.pop(agent, None)
        if before != after:
            self._hub.publish(agent)
