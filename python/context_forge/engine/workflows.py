"""``LiveWorkflows`` shared between the server's event loop and the engine thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from context_forge.workflow.graph import WorkflowGraph
from context_forge.workflow.live import LiveWorkflows

Listener = Callable[[str], None]


class SharedWorkflows(LiveWorkflows):
    """``LiveWorkflows`` whose updates hold ``lock`` and are announced to listeners.

    The engine holds the same lock while it touches the cache (whose eviction policy reads
    agent priorities), so a workflow registered or finished from the server's thread is never
    seen half-updated. The model's forward pass runs without the lock. After each update,
    every listener is called with the workflow id, still under the lock (the prefetcher
    replans that workflow); listeners must be quick and must not block.
    """

    def __init__(self, lock: threading.RLock, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lock = lock
        self._listeners: list[Listener] = []

    def add_listener(self, fn: Listener) -> None:
        with self.lock:
            self._listeners.append(fn)

    def _changed(self, workflow_id: str) -> None:
        for fn in self._listeners:
            fn(workflow_id)

    def register(self, instance_id: str, graph: WorkflowGraph) -> None:
        with self.lock:
            super().register(instance_id, graph)
            self._changed(instance_id)

    def on_request(self, workflow_id: str, agent_id: str) -> None:
        with self.lock:
            super().on_request(workflow_id, agent_id)
            self._changed(workflow_id)

    def on_request_finished(self, workflow_id: str, agent_id: str) -> None:
        with self.lock:
            super().on_request_finished(workflow_id, agent_id)
            self._changed(workflow_id)

    def agent_finished(self, workflow_id: str, agent_id: str) -> str | None:
        """A client reports the agent completed in a registered workflow (e.g. a skipped optional
        agent). Idempotent (``StepTracker.report_finished``): returns None when applied, else why
        nothing changed. Raises ``UnknownWorkflowError`` for an unregistered workflow."""
        with self.lock:
            reason = self.tracker.report_finished(workflow_id, agent_id)
            if reason is None:
                self._changed(workflow_id)
            return reason

    def finish(self, workflow_id: str) -> None:
        with self.lock:
            super().finish(workflow_id)
            self._changed(workflow_id)
