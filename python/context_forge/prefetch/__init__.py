"""Workflow-driven host->device KV prefetch (see docs/prefetch.md).

``planner`` (which agents are due, which node to load) needs neither torch nor the engine;
``copier`` (the page movers) needs torch and is imported on first use of its names.
"""

from __future__ import annotations

from typing import Any

from .controller import ControllerConfig, PrefetchController
from .ledger import ObservedPagePool, PrefetchLedger, PrefetchStats
from .planner import DueAgent, PlannerConfig, PrefetchPlanner, PrefetchTarget, host_only_pages, node_is_live
from .service import WorkflowPrefetcher
from .tasks import LoadTask, TaskKind, TaskQueue, TaskState

_COPIER_NAMES = ("PageCopier", "CpuCopier", "StreamCopier", "StreamWriteBack", "make_copier",
                 "chunk_pages_for", "DEFAULT_CHUNK_BYTES")

__all__ = [
    "ControllerConfig", "PrefetchController", "ObservedPagePool", "PrefetchLedger", "PrefetchStats",
    "DueAgent", "PlannerConfig", "PrefetchPlanner", "PrefetchTarget", "host_only_pages", "node_is_live",
    "WorkflowPrefetcher", "LoadTask", "TaskKind", "TaskQueue", "TaskState",
    "PageCopier", "CpuCopier", "StreamCopier", "StreamWriteBack", "make_copier", "chunk_pages_for",
    "DEFAULT_CHUNK_BYTES",
]


def __getattr__(name: str) -> Any:
    if name in _COPIER_NAMES:
        from . import copier
        return getattr(copier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
