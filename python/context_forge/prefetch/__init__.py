"""Workflow-driven host->device KV prefetch (see docs/prefetch.md).

``planner`` (which agents are due, which node to load) needs neither torch nor the engine;
the page movers (``copier``, ``stream_copier``, ``kernel_copier``) need torch and are imported
on first use of their names.
"""

from __future__ import annotations

from typing import Any

from .controller import ControllerConfig, PrefetchController
from .gate import EventGate, LayerGate, LoadFailed, ThreadGate
from .ledger import ObservedPagePool, PrefetchLedger, PrefetchStats
from .planner import DueAgent, PlannerConfig, PrefetchPlanner, PrefetchTarget, host_only_pages, node_is_live
from .service import WorkflowPrefetcher
from .tasks import LoadTask, TaskKind, TaskQueue, TaskState

_LAZY = {
    "PageCopier": "copier", "CpuCopier": "copier", "make_copier": "factory", "chunk_pages_for": "copier",
    "DEFAULT_CHUNK_BYTES": "copier", "IO_BACKENDS": "copier", "StreamCopier": "stream_copier",
    "StreamWriteBack": "stream_copier", "KernelCopier": "kernel_copier",
}

__all__ = [
    "ControllerConfig", "PrefetchController", "ObservedPagePool", "PrefetchLedger", "PrefetchStats",
    "DueAgent", "PlannerConfig", "PrefetchPlanner", "PrefetchTarget", "host_only_pages", "node_is_live",
    "WorkflowPrefetcher", "LoadTask", "TaskKind", "TaskQueue", "TaskState",
    "PageCopier", "CpuCopier", "StreamCopier", "StreamWriteBack", "KernelCopier", "make_copier",
    "chunk_pages_for", "DEFAULT_CHUNK_BYTES", "IO_BACKENDS", "LayerGate", "ThreadGate", "EventGate", "LoadFailed",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
