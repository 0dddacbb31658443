"""Workflow awareness: declared step graphs, live-instance step tracking, next-agent prediction,
and the agent priorities that cache policies consume."""
from context_forge.workflow.changes import ChangeFeed
from context_forge.workflow.errors import (
    CycleError,
    DuplicateAgentError,
    DuplicateWorkflowError,
    UnknownAgentError,
    UnknownDependencyError,
    UnknownWorkflowError,
    WorkflowError,
)
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.predictor import MarkovPredictor, PredictorFormatError
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.priority import (
    AgentPriority,
    BlendedPriority,
    GraphPriority,
    PredictorPriority,
    ScopedPriority,
)
from context_forge.workflow.scope import scope_key, split_scope
from context_forge.workflow.tracker import StepTracker

__all__ = [
    "AgentPriority",
    "AgentSpec",
    "BlendedPriority",
    "ChangeFeed",
    "CycleError",
    "DuplicateAgentError",
    "DuplicateWorkflowError",
    "GraphPriority",
    "LiveWorkflows",
    "MarkovPredictor",
    "PredictorFormatError",
    "PredictorPriority",
    "ScopedPriority",
    "StepTracker",
    "UnknownAgentError",
    "UnknownDependencyError",
    "UnknownWorkflowError",
    "WorkflowError",
    "WorkflowGraph",
    "scope_key",
    "split_scope",
]
