"""What the routes share: the engine, its metrics, the served model names and the API key."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import anyio

from context_forge.metrics import Metrics
from context_forge.workflow.errors import UnknownWorkflowError
from context_forge.workflow.graph import WorkflowGraph


@dataclass
class ServerState:
    engine: Any
    metrics: Metrics
    model_names: list[str]
    api_key: str | None

    @classmethod
    def from_engine(cls, engine: Any, config: Any) -> ServerState:
        names = [engine.model_name]
        return cls(engine=engine, metrics=engine.metrics, model_names=names, api_key=config.api_key or None)

    async def refresh_page_gauges(self) -> None:
        """Re-reads the engine's pages by state into the gauges (in a worker thread: the engine lock
        may be held by a step). Engines without the breakdown are left alone."""
        read = getattr(self.engine, "page_states", None)
        if callable(read):
            await anyio.to_thread.run_sync(read)

    def engine_alive(self) -> bool:
        alive = getattr(self.engine, "is_alive", None)
        return bool(alive()) if callable(alive) else True

    # Workflow instances live in the engine's LiveWorkflows; these wrap the calls the routes need.

    def register_workflow(self, workflow_id: str, graph: WorkflowGraph) -> None:
        self.engine.workflows.register(workflow_id, graph)

    def agent_finished(self, workflow_id: str, agent_id: str) -> str | None:
        """Marks the agent done in a registered workflow (also one that never sent a request, such as
        a skipped optional agent). Returns None when applied, else why nothing changed: a dynamic
        workflow has no graph to update, and a finish is never counted twice (see
        ``StepTracker.report_finished``)."""
        live = self.engine.workflows
        with self._lock():
            if workflow_id in live.tracker:
                return live.agent_finished(workflow_id, agent_id)
            if live.is_dynamic(workflow_id):
                return f"workflow {workflow_id!r} is dynamic (no registered graph), so there is nothing to mark"
        raise UnknownWorkflowError(workflow_id)

    def finish_workflow(self, workflow_id: str) -> None:
        self.engine.workflows.finish(workflow_id)

    def live_workflows(self) -> list[str]:
        with self._lock():
            return list(self.engine.workflows.live_workflows())

    def graph_of(self, workflow_id: str) -> WorkflowGraph | None:
        """The registered graph of a live instance, or None when the instance is not declared."""
        tracker = self.engine.workflows.tracker
        with self._lock():
            return tracker.graph_of(workflow_id) if workflow_id in tracker else None

    def _lock(self) -> AbstractContextManager[Any]:
        """The engine's workflow lock (the engine thread reads priorities under it), if it has one."""
        lock = getattr(self.engine.workflows, "lock", None)
        return lock if lock is not None else nullcontext()
