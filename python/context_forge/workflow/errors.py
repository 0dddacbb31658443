"""Errors raised by the workflow package; all derive from `WorkflowError` (a `ValueError`)."""
from __future__ import annotations


class WorkflowError(ValueError):
    """Base class: a workflow graph, report or model input was invalid."""


class CycleError(WorkflowError):
    """The declared dependencies contain a cycle; `cycle` lists it with the first agent repeated at the end."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = list(cycle)
        super().__init__("dependency cycle: " + " -> ".join(self.cycle))


class UnknownDependencyError(WorkflowError):
    """An agent depends on an agent that the graph does not declare."""

    def __init__(self, agent_id: str, dependency: str) -> None:
        self.agent_id = agent_id
        self.dependency = dependency
        super().__init__(f"agent {agent_id!r} depends on unknown agent {dependency!r}")


class DuplicateAgentError(WorkflowError):
    """Two agents of one graph share an agent_id."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"duplicate agent_id {agent_id!r}")


class UnknownAgentError(WorkflowError):
    """An agent was named that the workflow's graph does not contain."""

    def __init__(self, agent_id: str, where: str = "") -> None:
        self.agent_id = agent_id
        suffix = f" of {where}" if where else ""
        super().__init__(f"unknown agent {agent_id!r}: not in the graph{suffix}")


class UnknownWorkflowError(WorkflowError, KeyError):
    """A report named a workflow instance that is not live (never registered or already finished)."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"unknown workflow instance {workflow_id!r}: not registered or already finished")

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateWorkflowError(WorkflowError):
    """An instance id was registered while an instance with that id is still live."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow instance {workflow_id!r} is already live")
