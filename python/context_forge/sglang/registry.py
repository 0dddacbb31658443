"""`WorkflowRegistry`: the live-workflow state kept inside an SGLang scheduler process.

Requests report themselves through the radix cache (first prefix match = started; release or
abort = finished). Every decision here depends only on the order of those reports, never on
wall-clock time, so tensor-parallel ranks, which see the same requests in the same order, keep
identical registries and make identical eviction and prefetch choices.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from context_forge.sglang.declared import DeclaredSteps
from context_forge.sglang.metadata import WorkflowMeta
from context_forge.sglang.settings import PluginSettings
from context_forge.workflow.predictor import MarkovPredictor
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.priority import AgentPriority, AnyInstancePriority, BlendedPriority

__all__ = ["WorkflowRegistry", "get_registry", "set_registry"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Running:
    workflow_id: str
    agent_id: str


class WorkflowRegistry:
    """Live workflows, running requests and the agent priority that eviction and prefetch use."""

    def __init__(self, settings: PluginSettings | None = None, predictor: MarkovPredictor | None = None) -> None:
        self.settings = settings if settings is not None else PluginSettings()
        if predictor is None:
            predictor = (
                MarkovPredictor.load(self.settings.predictor_path, smoothing=self.settings.predictor_smoothing)
                if self.settings.predictor_path
                else MarkovPredictor(smoothing=self.settings.predictor_smoothing)
            )
        self.live = LiveWorkflows(predictor=predictor, weight=self.settings.blend_weight)
        self.declared = DeclaredSteps()
        live: AgentPriority = (
            self.declared
            if self.settings.priority == "steps"
            else BlendedPriority(self.declared, self.live.predictor_priority, self.settings.blend_weight)
        )
        # The engine's rank: an agent's next use by any instance, live or expected to start.
        self._priority: AgentPriority = AnyInstancePriority(live, self.live.recurrence)
        self._requests: dict[str, _Running] = {}
        self._activity: OrderedDict[str, int] = OrderedDict()
        self._final: set[str] = set()

    # ----- request lifecycle --------------------------------------------------------------
    def request_started(self, rid: str, meta: WorkflowMeta) -> bool:
        """Record that request ``rid`` of ``meta`` runs; False if it was already recorded."""
        if rid in self._requests:
            return False
        wf = meta.workflow_id
        if wf not in self._activity:
            self._make_room()
        self._requests[rid] = _Running(wf, meta.agent_id)
        self._activity[wf] = self._activity.get(wf, 0) + 1
        self._activity.move_to_end(wf)
        if meta.final:
            self._final.add(wf)
        self.live.on_request(wf, meta.agent_id)
        if meta.upcoming or wf not in self.declared.workflows():
            self.declared.declare(wf, meta.upcoming)
        self.declared.started(wf, meta.agent_id)
        return True

    def request_finished(self, rid: str) -> bool:
        """Record that request ``rid`` finished or was aborted; False if it was not running."""
        running = self._requests.pop(rid, None)
        if running is None:
            return False
        wf = running.workflow_id
        self.live.on_request_finished(wf, running.agent_id)
        self.declared.finished(wf, running.agent_id)
        self._activity[wf] -= 1
        if wf in self._final and self._activity[wf] == 0:
            self.finish_workflow(wf)
        return True

    def finish_workflow(self, workflow_id: str) -> None:
        """Forget a workflow (its running requests, if any, are dropped too)."""
        if workflow_id not in self._activity:
            return
        for rid in [r for r, run in self._requests.items() if run.workflow_id == workflow_id]:
            del self._requests[rid]
        del self._activity[workflow_id]
        self._final.discard(workflow_id)
        self.declared.remove(workflow_id)
        self.live.finish(workflow_id)

    def _make_room(self) -> None:
        """Before a new workflow starts, drop the least recently active idle ones above the cap."""
        excess = len(self._activity) + 1 - self.settings.max_live_workflows
        if excess <= 0:
            return
        idle = [wf for wf, running in self._activity.items() if running == 0][:excess]
        for wf in idle:
            logger.debug("dropping idle workflow %r (more than %d live)", wf, self.settings.max_live_workflows)
            self.finish_workflow(wf)

    # ----- queries ---------------------------------------------------------------------------
    def priority(self, agent_id: str) -> float:
        """Expected steps until the agent runs in any instance, live or expected to start (lower =
        more urgent, inf = not expected)."""
        return self._priority.priority(agent_id)

    def is_declared(self, agent_id: str) -> bool:
        """Whether the agent's priority is what a live workflow's declared steps say, not a
        prediction or a learned recurrence (`rank_key` orders such nodes differently)."""
        priority = self.priority(agent_id)
        return priority < math.inf and self.declared.priority(agent_id) == priority

    def is_running(self, agent_id: str) -> bool:
        return self.declared.running(agent_id)

    def is_tracked(self, rid: str) -> bool:
        return rid in self._requests

    def live_workflows(self) -> list[str]:
        return list(self._activity)

    def due_agents(self, candidates: Iterable[str], horizon: float | None = None) -> list[str]:
        """Candidates without a running request whose priority is within ``horizon`` steps
        (default ``load_ahead_step``), most urgent first (ties by name)."""
        limit = self.settings.load_ahead_step if horizon is None else horizon
        scored = []
        for agent in set(candidates):
            steps = self.priority(agent)
            if steps <= limit and not math.isinf(steps) and not self.is_running(agent):
                scored.append((steps, agent))
        return [agent for _, agent in sorted(scored)]


_lock = threading.Lock()
_registry: WorkflowRegistry | None = None


def get_registry() -> WorkflowRegistry:
    """This process's registry, created from `PluginSettings.from_env()` on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = WorkflowRegistry(PluginSettings.from_env())
        return _registry


def set_registry(registry: WorkflowRegistry | None) -> None:
    """Replace this process's registry (None: recreate from the environment on next use)."""
    global _registry
    with _lock:
        _registry = registry
