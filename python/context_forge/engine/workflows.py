"""``LiveWorkflows`` shared between the server's event loop and the engine thread."""

from __future__ import annotations

import threading

from context_forge.workflow.graph import WorkflowGraph
from context_forge.workflow.priority import LiveWorkflows


class SharedWorkflows(LiveWorkflows):
    """``LiveWorkflows`` whose updates hold ``lock``.

    The engine holds the same lock while it touches the cache (whose eviction policy reads
    agent priorities), so a workflow registered or finished from the server's thread is never
    seen half-updated. The model's forward pass runs without the lock.
    """

    def __init__(self, lock: threading.RLock, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lock = lock

    def register(self, instance_id: str, graph: WorkflowGraph) -> None:
        with self.lock:
            super().register(instance_id, graph)

    def on_request(self, workflow_id: str, agent_id: str) -> None:
        with self.lock:
            super().on_request(workflow_id, agent_id)

    def on_request_finished(self, workflow_id: str, agent_id: str) -> None:
        with self.lock:
            super().on_request_finished(workflow_id, agent_id)

    def finish(self, workflow_id: str) -> None:
        with self.lock:
            super().finish(workflow_id)
