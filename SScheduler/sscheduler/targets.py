"""What the client tells the server about workflows, by kind of server (chosen by name).

- `context_forge`: every request carries `{"workflow": {"workflow_id", "agent_id"}}`; instances
  with a graph are declared on `/v1/workflows`; skipped optional agents and finished instances
  are reported there (the server sees each request finish by itself).
- `sglang`: SGLang with the Context Forge plugin. Every request carries `custom_params`
  `{"workflow_id", "agent_id", "upcoming": {agent_id: steps}, "final"?}` (the format of
  `context_forge.sglang.metadata`), where `upcoming` is computed here from the instance's
  declared graph (a `StepTracker` over this client's live instances): each agent the instance
  will still invoke and its steps to execution (0 = running or ready now); `final` marks the
  instance's last request. Nothing else is sent: that server has no workflow API.
- `openai`: nothing extra (vanilla SGLang, vLLM, any OpenAI-compatible server).

A target sees each instance's life: `instance_started` (graph None for a dynamic workflow,
whose agents are not declared), `before_request` (returns the extra request body),
`after_request` (also after a failed request), `agent_skipped`, `instance_finished`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from context_forge.sglang.metadata import MAX_UPCOMING, to_custom_params
from context_forge.workflow.graph import WorkflowGraph
from context_forge.registry import Registry
from context_forge.workflow.tracker import StepTracker
from sscheduler.control import WorkflowControl

__all__ = ["Target", "make_target", "register_target", "target_names"]

_TARGETS: Registry[type[Target]] = Registry("target")


def register_target(name: str) -> Callable[[type[Target]], type[Target]]:
    return _TARGETS.register(name)


def target_names() -> list[str]:
    return _TARGETS.names()


def make_target(name: str, control: WorkflowControl) -> Target:
    """The target named `name`; `ValueError` lists the known names otherwise."""
    return _TARGETS.lookup(name)(control)


class Target(ABC):
    name: ClassVar[str]

    def __init__(self, control: WorkflowControl) -> None:
        self.control = control

    @abstractmethod
    async def instance_started(self, instance_id: str, graph: WorkflowGraph | None) -> None: ...

    @abstractmethod
    async def before_request(self, instance_id: str, agent_id: str, final: bool = False) -> dict[str, Any]:
        """Marks a request of the agent as started; returns the fields to add to its body.
        `final`: the caller knows this is the instance's last request."""

    @abstractmethod
    async def after_request(self, instance_id: str, agent_id: str) -> None: ...

    @abstractmethod
    async def agent_skipped(self, instance_id: str, agent_id: str) -> None:
        """An optional agent of a declared instance will not run this time."""

    @abstractmethod
    async def instance_finished(self, instance_id: str) -> None: ...


@register_target("openai")
class OpenAITarget(Target):
    async def instance_started(self, instance_id: str, graph: WorkflowGraph | None) -> None:
        return None

    async def before_request(self, instance_id: str, agent_id: str, final: bool = False) -> dict[str, Any]:
        return {}

    async def after_request(self, instance_id: str, agent_id: str) -> None:
        return None

    async def agent_skipped(self, instance_id: str, agent_id: str) -> None:
        return None

    async def instance_finished(self, instance_id: str) -> None:
        return None


@register_target("context_forge")
class ContextForgeTarget(Target):
    """Declares instances that have a graph and reports skipped agents and finished instances.

    A finished request is not reported as `agent_finished`: the server's engine marks the agent
    finished itself when the request completes, and a second report would count twice. In a
    `repeat` instance that is wrong, not just redundant: a report that arrives after the engine
    completed the round marks the agent done in the next round.
    """

    def __init__(self, control: WorkflowControl) -> None:
        super().__init__(control)
        self._declared: set[str] = set()

    async def instance_started(self, instance_id: str, graph: WorkflowGraph | None) -> None:
        if graph is not None and await self.control.declare(instance_id, graph):
            self._declared.add(instance_id)

    async def before_request(self, instance_id: str, agent_id: str, final: bool = False) -> dict[str, Any]:
        return {"workflow": {"workflow_id": instance_id, "agent_id": agent_id}}

    async def after_request(self, instance_id: str, agent_id: str) -> None:
        return None

    async def agent_skipped(self, instance_id: str, agent_id: str) -> None:
        if instance_id in self._declared:
            await self.control.agent_finished(instance_id, agent_id)

    async def instance_finished(self, instance_id: str) -> None:
        self._declared.discard(instance_id)
        await self.control.workflow_finished(instance_id)


@register_target("sglang")
class SGLangTarget(Target):
    """`custom_params` as `context_forge.sglang.metadata` defines it, built by `to_custom_params`."""

    def __init__(self, control: WorkflowControl) -> None:
        super().__init__(control)
        self.tracker = StepTracker()

    async def instance_started(self, instance_id: str, graph: WorkflowGraph | None) -> None:
        if graph is not None:
            self.tracker.register(instance_id, graph)

    async def before_request(self, instance_id: str, agent_id: str, final: bool = False) -> dict[str, Any]:
        if instance_id in self.tracker:
            self.tracker.agent_started(instance_id, agent_id)
        return {"custom_params": to_custom_params(instance_id, agent_id, self.upcoming(instance_id), final)}

    async def after_request(self, instance_id: str, agent_id: str) -> None:
        if instance_id in self.tracker:
            self.tracker.agent_finished(instance_id, agent_id)

    async def agent_skipped(self, instance_id: str, agent_id: str) -> None:
        await self.after_request(instance_id, agent_id)

    async def instance_finished(self, instance_id: str) -> None:
        if instance_id in self.tracker:
            self.tracker.finish(instance_id)

    def upcoming(self, instance_id: str) -> dict[str, float]:
        """{agent_id: steps} of the agents the instance will still invoke (0 = running or ready);
        empty for an undeclared (dynamic) instance. At most `MAX_UPCOMING`, the nearest first."""
        if instance_id not in self.tracker:
            return {}
        graph = self.tracker.graph_of(instance_id)
        steps = {a: self.tracker.instance_steps(instance_id, a) for a in graph.order}
        finite = sorted(((s, a) for a, s in steps.items() if not math.isinf(s)))[:MAX_UPCOMING]
        return {a: s for s, a in finite}
