"""`DeclaredSteps`: agent priorities from the steps that clients declare with each request."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from context_forge.workflow.changes import ChangeFeed, ChangeHub
from context_forge.workflow.minmap import AgentMinTable
from context_forge.workflow.priority import AgentPriority

__all__ = ["DeclaredSteps"]


class DeclaredSteps(AgentPriority):
    """Steps-to-execution as clients declare them (``custom_params.upcoming``).

    Per workflow, an agent's value is 0 while it has a running request, else the steps of the
    workflow's latest declared map (absent: no contribution). An agent's priority is the minimum
    over live workflows, `math.inf` when none contributes. The server learns no graph here: the
    client, which knows its workflow, keeps the map current by sending one with each request.
    """

    def __init__(self) -> None:
        self._declared: dict[str, dict[str, float]] = {}
        self._running: dict[str, Counter[str]] = {}
        self._mins = AgentMinTable()
        self._hub = ChangeHub()

    def declare(self, workflow_id: str, upcoming: Mapping[str, float]) -> None:
        """Replace the workflow's declared map."""
        old = self._declared.get(workflow_id, {})
        self._declared[workflow_id] = dict(upcoming)
        for agent in old.keys() | upcoming.keys():
            self._refresh(workflow_id, agent)

    def started(self, workflow_id: str, agent_id: str) -> None:
        """A request of the agent began running in the workflow."""
        self._declared.setdefault(workflow_id, {})
        self._running.setdefault(workflow_id, Counter())[agent_id] += 1
        self._refresh(workflow_id, agent_id)

    def finished(self, workflow_id: str, agent_id: str) -> None:
        """A request of the agent in the workflow completed (or was aborted)."""
        running = self._running.get(workflow_id)
        if running is None or running[agent_id] <= 0:
            raise KeyError(f"agent {agent_id!r} has no running request in workflow {workflow_id!r}")
        running[agent_id] -= 1
        if running[agent_id] == 0:
            del running[agent_id]
        self._refresh(workflow_id, agent_id)

    def remove(self, workflow_id: str) -> None:
        """The workflow ended: it stops contributing."""
        agents = set(self._declared.pop(workflow_id, {})) | set(self._running.pop(workflow_id, {}))
        for agent in agents:
            self._set(agent, workflow_id, None)

    def workflows(self) -> list[str]:
        return list(self._declared)

    def running(self, agent_id: str) -> bool:
        """Whether the agent has a running request in any workflow."""
        return any(counts[agent_id] > 0 for counts in self._running.values())

    def priority(self, agent_id: str) -> float:
        return self._mins.min(agent_id)

    def subscribe(self) -> ChangeFeed:
        return self._hub.subscribe()

    def _refresh(self, workflow_id: str, agent_id: str) -> None:
        running = self._running.get(workflow_id)
        if running is not None and running[agent_id] > 0:
            value: float | None = 0.0
        else:
            value = self._declared.get(workflow_id, {}).get(agent_id)
        self._set(agent_id, workflow_id, value)

    def _set(self, agent_id: str, workflow_id: str, value: float | None) -> None:
        if self._mins.set(agent_id, workflow_id, value):
            self._hub.publish(agent_id)
