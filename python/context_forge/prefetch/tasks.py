"""Load tasks and the priority queue the prefetch controller serves them from.

Order: on-demand loads first, in arrival order; then prefetches by ``(steps, -prob)``, ties in
arrival order. A task's priority may change while it is queued (the workflow moved on): the
queue keeps one live heap entry per task and skips superseded ones when popping.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import threading
from dataclasses import dataclass, field

from context_forge.cache.node import RadixNode
from context_forge.cache.tiered import LoadPlan

_ids = itertools.count(1)


class TaskKind(enum.Enum):
    DEMAND = "demand"
    PREFETCH = "prefetch"


class TaskState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.RUNNING)


@dataclass(eq=False)
class LoadTask:
    """One host->device load of the host-only part of the path to ``node``.

    A prefetch reserves its device pages only when it reaches the front of the queue (so a
    queued prefetch holds nothing and cancelling it is free); an on-demand load is reserved when
    it is submitted (``plan`` is set at once). ``finished`` is set when the task reaches a final
    state; ``reason`` says why a task was cancelled or skipped.
    """

    kind: TaskKind
    node: RadixNode
    steps: float = 0.0
    prob: float = 1.0
    workflow_id: str | None = None
    agent_id: str | None = None
    plan: LoadPlan | None = None
    id: int = field(default_factory=lambda: next(_ids))
    state: TaskState = TaskState.QUEUED
    reason: str = ""
    finished: threading.Event = field(default_factory=threading.Event)
    version: int = 0

    @property
    def sort_key(self) -> tuple:
        if self.kind is TaskKind.DEMAND:
            return (0, 0.0, 0.0, self.id)
        return (1, self.steps, -self.prob, self.id)

    @property
    def num_pages(self) -> int:
        return 0 if self.plan is None else len(self.plan.device_pages)

    def __repr__(self) -> str:
        return (f"LoadTask(id={self.id}, {self.kind.value}, {self.state.value}, node={self.node.id}, "
                f"steps={self.steps}, agent={self.agent_id!r})")


class TaskQueue:
    """Queued tasks in priority order (see the module docstring). Not thread-safe."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple, int, LoadTask]] = []
        self._queued: set[LoadTask] = set()

    def push(self, task: LoadTask) -> None:
        """Queue ``task``, or re-rank it if it is queued already (after changing its priority)."""
        task.version += 1
        self._queued.add(task)
        heapq.heappush(self._heap, (task.sort_key, task.version, task))

    def discard(self, task: LoadTask) -> None:
        self._queued.discard(task)

    def pop(self, kind: TaskKind | None = None) -> LoadTask | None:
        """Take the most urgent queued task (only of ``kind`` when given), or ``None``."""
        heap = self._heap
        while heap:
            _, version, task = heap[0]
            if task not in self._queued or version != task.version:
                heapq.heappop(heap)
                continue
            if kind is not None and task.kind is not kind:
                return None
            heapq.heappop(heap)
            self._queued.discard(task)
            return task
        return None

    def has(self, kind: TaskKind) -> bool:
        """Whether a task of ``kind`` is queued (demands sort first, so this is cheap for them)."""
        if kind is TaskKind.DEMAND:
            head = self._peek()
            return head is not None and head.kind is TaskKind.DEMAND
        return any(t.kind is kind for t in self._queued)

    def _peek(self) -> LoadTask | None:
        heap = self._heap
        while heap:
            _, version, task = heap[0]
            if task in self._queued and version == task.version:
                return task
            heapq.heappop(heap)
        return None

    def tasks(self) -> list[LoadTask]:
        """Queued tasks, most urgent first."""
        return sorted(self._queued, key=lambda t: t.sort_key)

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, task: object) -> bool:
        return task in self._queued


@dataclass(frozen=True)
class ControllerConfig:
    """``history``: how many finished tasks to keep in ``history`` (for tests and debugging).
    ``layer_gates``: give every load a per-layer gate (``ticket.gate``) so that requests may
    start before it lands (``prefetch_wait_mode: layer``). ``plan``: serve prefetches at all;
    ``False`` (lru, ``enable_prefetch: false``) keeps only the on-demand loads, through the same
    batched copier as every policy (the fair baseline)."""

    history: int = 256
    layer_gates: bool = False
    plan: bool = True

    def __post_init__(self) -> None:
        if self.history < 0:
            raise ValueError(f"ControllerConfig.history must be >= 0, got {self.history}")
