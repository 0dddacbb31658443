"""`LiveWorkflows`: the live workflows as the engine, the simulator and the SGLang backend see them
(declared graphs, request starts and finishes, the predictor, recurrence, rounds and arrival
order), and the agent priorities of `context_forge.workflow.priority` built over them."""
from __future__ import annotations

from collections.abc import Callable

from context_forge.workflow.arrivals import ArrivalOrder
from context_forge.workflow.errors import UnknownWorkflowError, WorkflowError
from context_forge.workflow.graph import WorkflowGraph
from context_forge.workflow.predictor import MarkovPredictor
from context_forge.workflow.priority import (
    PRIORITY_NAMES,
    AgentPriority,
    AnyInstancePriority,
    BlendedPriority,
    GraphPriority,
    PredictorPriority,
    ScopedPriority,
)
from context_forge.workflow.recurrence import Recurrence
from context_forge.workflow.rounds import RoundsModel
from context_forge.workflow.tracker import StepTracker

__all__ = ["LiveWorkflows"]


class LiveWorkflows:
    """Live workflows as the engine/simulator sees them, and the priorities derived from them.

    A workflow registered with a graph is static (tracked by the `StepTracker`); a workflow whose
    first request arrives unregistered is dynamic (scored by the predictor). Every request is
    also fed to the shared predictor so it learns from static workflows too.
    """

    def __init__(
        self, predictor: MarkovPredictor | None = None, weight: float = 0.6, horizon: int = 8
    ) -> None:
        self.tracker = StepTracker()
        self.predictor = predictor if predictor is not None else MarkovPredictor()
        self._graph = GraphPriority(self.tracker)
        self._predicted = PredictorPriority(self.predictor, horizon)
        self._blended = BlendedPriority(self._graph, self._predicted, weight)
        self.recurrence = Recurrence()
        self.rounds = RoundsModel()
        self._any_graph = AnyInstancePriority(self._graph, self.recurrence)
        self._any_blended = AnyInstancePriority(self._blended, self.recurrence)
        self.arrivals = ArrivalOrder()
        self._scoped_graph = ScopedPriority(self.tracker, self._predicted, self._any_graph,
                                            arrivals=self.arrivals)
        self._scoped_blended = ScopedPriority(self.tracker, self._predicted, self._any_blended, weight,
                                              self.recurrence, self.arrivals)
        self._dynamic: dict[str, dict[str, int]] = {}
        self._finish_listeners: list[Callable[[str], None]] = []

    def register(self, instance_id: str, graph: WorkflowGraph) -> None:
        """Declare a static workflow before its first request."""
        if instance_id in self._dynamic:
            raise WorkflowError(
                f"workflow {instance_id!r} is already live as a dynamic workflow; "
                "register its graph before its first request"
            )
        self.tracker.register(instance_id, graph)

    def on_request(self, workflow_id: str, agent_id: str) -> None:
        """A request of `agent_id` arrived for the workflow (starting it if unknown: dynamic)."""
        if not isinstance(agent_id, str) or not agent_id:
            raise WorkflowError(f"agent_id must be a non-empty string, got {agent_id!r}")
        if workflow_id in self.tracker:
            graph = self.tracker.graph_of(workflow_id)
            self.tracker.agent_started(workflow_id, agent_id)
            self.arrivals.arrived(workflow_id, agent_id)
            if graph.repeat:
                current = self.tracker.rounds_started(workflow_id)
                self.tracker.set_last_round(workflow_id, not self.rounds.continues(graph, current))
            self.predictor.observe(workflow_id, agent_id, score=False)
            self.recurrence.observe(workflow_id, agent_id, float(graph.depth(agent_id)))
            return
        self.predictor.observe(workflow_id, agent_id)
        self.recurrence.observe(workflow_id, agent_id)
        self.arrivals.arrived(workflow_id, agent_id)
        running = self._dynamic.setdefault(workflow_id, {})
        running[agent_id] = running.get(agent_id, 0) + 1
        self._predicted.refresh(workflow_id, running)

    def on_request_finished(self, workflow_id: str, agent_id: str) -> None:
        """A request of `agent_id` in the workflow completed."""
        if workflow_id in self.tracker:
            self.tracker.agent_finished(workflow_id, agent_id)
            self.arrivals.finished(workflow_id, agent_id)
            return
        running = self._dynamic.get(workflow_id)
        if running is None:
            raise UnknownWorkflowError(workflow_id)
        count = running.get(agent_id, 0)
        if count == 0:
            raise WorkflowError(
                f"agent {agent_id!r} has no running request in dynamic workflow {workflow_id!r}"
            )
        self.arrivals.finished(workflow_id, agent_id)
        if count == 1:
            del running[agent_id]
            self._predicted.refresh(workflow_id, running)
        else:
            running[agent_id] = count - 1

    def finish(self, workflow_id: str) -> None:
        """The workflow ended: it stops counting in every priority."""
        if workflow_id in self.tracker:
            self.rounds.record(self.tracker.graph_of(workflow_id), self.tracker.rounds_started(workflow_id))
            self.tracker.finish(workflow_id)
        elif workflow_id in self._dynamic:
            del self._dynamic[workflow_id]
            self._predicted.remove(workflow_id)
        else:
            raise UnknownWorkflowError(workflow_id)
        self.predictor.forget(workflow_id)
        self.recurrence.finish(workflow_id)
        self.arrivals.forget(workflow_id)
        for fn in self._finish_listeners:
            fn(workflow_id)

    def add_finish_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(workflow_id)`` after every `finish` (the cache drops the workflow's tags)."""
        self._finish_listeners.append(fn)

    def is_dynamic(self, workflow_id: str) -> bool:
        return workflow_id in self._dynamic

    def live_workflows(self) -> list[str]:
        return self.tracker.live_instances() + list(self._dynamic)

    @property
    def graph_priority(self) -> GraphPriority:
        return self._graph

    @property
    def predictor_priority(self) -> PredictorPriority:
        return self._predicted

    @property
    def blended_priority(self) -> BlendedPriority:
        return self._blended

    @property
    def any_graph_priority(self) -> AnyInstancePriority:
        """Steps until any instance, live (declared graphs) or expected, calls the agent."""
        return self._any_graph

    @property
    def any_blended_priority(self) -> AnyInstancePriority:
        """Like `any_graph_priority` with live instances scored by the blend (pbkv)."""
        return self._any_blended

    @property
    def scoped_graph_priority(self) -> ScopedPriority:
        """Per-workflow steps from declared graphs, for keys made by `scope_key` (kvflow)."""
        return self._scoped_graph

    @property
    def scoped_blended_priority(self) -> ScopedPriority:
        """Per-workflow blend of declared steps and predicted steps (pbkv)."""
        return self._scoped_blended

    def priority(self, name: str) -> AgentPriority:
        """The priority named `name`: one of "graph", "predictor", "blended"."""
        by_name: dict[str, AgentPriority] = {
            "graph": self._graph,
            "predictor": self._predicted,
            "blended": self._blended,
            "any_graph": self._any_graph,
            "any_blended": self._any_blended,
            "scoped_graph": self._scoped_graph,
            "scoped_blended": self._scoped_blended,
        }
        try:
            return by_name[name]
        except (KeyError, TypeError):
            raise WorkflowError(
                f"unknown priority {name!r}; choose one of {', '.join(PRIORITY_NAMES)}"
            ) from None
