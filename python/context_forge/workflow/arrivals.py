"""Which requests have arrived and not finished yet, in the order they arrived.

A server admits its queue first come, first served: of two agents whose requests are both waiting,
the one that arrived first runs first. So among KV that requests already waiting will use (their
agents are due now, step 0), the KV of the latest arrival is needed last and the cache should give
it up first. Both ranks an agent's KV carries get an order: the scoped key ``(workflow, agent)``
of the waiting request, and the bare agent (its KV shared across instances), ordered by the
earliest request of that agent still waiting or running.

Arrivals are numbered by a counter, not a clock, so replicas that see the same requests in the
same order agree. A finish retires the oldest unfinished request of its ``(workflow, agent)``.
"""
from __future__ import annotations

import itertools

from context_forge.workflow.changes import ChangeFeed, ChangeHub
from context_forge.workflow.scope import scope_key, split_scope

__all__ = ["ArrivalOrder"]


class ArrivalOrder:
    """Arrival numbers of the unfinished requests, per scoped key and per bare agent."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._scoped: dict[tuple[str, str], dict[int, None]] = {}
        self._agent: dict[str, dict[int, None]] = {}
        self._workflow: dict[str, set[str]] = {}
        self._hub = ChangeHub()

    def arrived(self, workflow_id: str, agent_id: str) -> None:
        """A request of ``agent_id`` in ``workflow_id`` arrived."""
        seq = next(self._counter)
        self._scoped.setdefault((workflow_id, agent_id), {})[seq] = None
        self._workflow.setdefault(workflow_id, set()).add(agent_id)
        agent = self._agent.setdefault(agent_id, {})
        agent[seq] = None
        self._hub.publish(scope_key(workflow_id, agent_id))
        if len(agent) == 1:
            self._hub.publish(agent_id)

    def finished(self, workflow_id: str, agent_id: str) -> None:
        """The oldest unfinished request of ``agent_id`` in ``workflow_id`` finished (or left)."""
        seqs = self._scoped.get((workflow_id, agent_id))
        if not seqs:
            return
        seq = next(iter(seqs))
        del seqs[seq]
        if not seqs:
            del self._scoped[(workflow_id, agent_id)]
            agents = self._workflow[workflow_id]
            agents.discard(agent_id)
            if not agents:
                del self._workflow[workflow_id]
        agent = self._agent[agent_id]
        first = next(iter(agent))
        del agent[seq]
        if not agent:
            del self._agent[agent_id]
        self._hub.publish(scope_key(workflow_id, agent_id))
        if seq == first:
            self._hub.publish(agent_id)

    def forget(self, workflow_id: str) -> None:
        """The workflow ended: its requests no longer wait."""
        for agent_id in sorted(self._workflow.get(workflow_id, ())):
            while (workflow_id, agent_id) in self._scoped:
                self.finished(workflow_id, agent_id)

    def first(self, key: str) -> int | None:
        """The arrival number of the earliest unfinished request under ``key`` (a scoped key or a
        bare agent), or None when none is waiting or running."""
        wf, agent = split_scope(key)
        seqs = self._agent.get(agent) if wf is None else self._scoped.get((wf, agent))
        return next(iter(seqs)) if seqs else None

    def subscribe(self) -> ChangeFeed:
        """Keys whose `first` changed."""
        return self._hub.subscribe()
