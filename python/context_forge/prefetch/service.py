"""The engine's prefetch front: plans on workflow events, loads through the controller.

Triggers: every change the engine's ``SharedWorkflows`` reports (workflow registered, request
arrived or finished, agent finished, workflow finished) marks that workflow; changes made to the
step tracker behind ``SharedWorkflows``' back (the server's ``agent_finished`` today calls
``tracker.agent_finished`` directly) are caught through a tracker change feed, which marks the
live workflows that declare a changed agent. ``tick()`` (engine lock, once per engine step and
when the idle engine is woken) replans the marked workflows: their due agents' target nodes
become the workflow's queued prefetches, replacing (cancelling) what was queued before.

Pressure: ``set_pressure(max_steps, reserve_pages)`` caps the look-ahead with the mode's
``prefetch_max_steps`` (``-1``: no prefetch) and keeps the mode's free-page target free.

Planning off (``ControllerConfig.plan`` false: lru, or ``enable_prefetch: false``): the engine
still loads through this object (its on-demand loads take the same batched, layer-overlapped
copier as every policy's), but nothing is ever planned: ``tick`` only drains the triggers and no
pressure mode turns planning on.

Protection (``budget_pages > 0``, see ``prefetch.protection``): replans release the protections
of agents no longer due, a finished workflow releases all of its own, an admission claims its
agent's (and tells the guard the pages it allocated, again with its output when it finishes),
and a failed allocation releases the least urgent (:meth:`release_for_alloc`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from context_forge.cache.node import RadixNode
from context_forge.cache.tiered import RadixCache
from context_forge.workflow.live import LiveWorkflows

from .controller import ControllerConfig, PrefetchController
from .guard import PrefetchGuard
from .ledger import ObservedPagePool, PrefetchLedger, PrefetchStats
from .planner import PlannerConfig, PrefetchPlanner
from .protection import Backlog, Protection
from .tasks import LoadTask

if TYPE_CHECKING:
    from context_forge.memory.pressure import ModeActions

    from .copier import PageCopier


class WorkflowPrefetcher:
    """Planner + controller + ledger, wired for the engine."""

    def __init__(self, cache: RadixCache, workflows: LiveWorkflows, copier: PageCopier,
                 lock: threading.RLock, planner_config: PlannerConfig | None = None,
                 controller_config: ControllerConfig | None = None,
                 on_complete: Callable[[LoadTask], None] | None = None, budget_pages: int = 0,
                 backlog: Backlog | None = None) -> None:
        self.cache = cache
        self.workflows = workflows
        self.lock = lock
        self.planner = PrefetchPlanner(workflows, cache, planner_config)
        self.controller = PrefetchController(cache, copier, lock, controller_config, on_complete=on_complete)
        self.protection = Protection(PrefetchGuard(cache, budget_pages), self.controller.stats, backlog)
        if self.plans:
            self.controller.protection = self.protection
        if isinstance(cache.device_pool, ObservedPagePool):
            cache.device_pool.add_free_listener(self.ledger.freed)
        self._feed = workflows.tracker.subscribe()
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._max_steps = self.planner.config.load_ahead_step
        self._planned: set[str] = set()

    @property
    def plans(self) -> bool:
        """Whether prefetches are planned (else only on-demand loads run)."""
        return self.controller.config.plan

    @property
    def stats(self) -> PrefetchStats:
        return self.controller.stats

    @property
    def ledger(self) -> PrefetchLedger:
        return self.controller.ledger

    @property
    def error(self) -> BaseException | None:
        return self.controller.error

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        """Stop the worker and drop every protection (call without the engine lock)."""
        self.controller.stop()
        with self.lock:
            self.protection.release_all()

    # ---------------------------------------------------------------- triggers (thread-safe)
    def mark(self, workflow_id: str) -> None:
        """Replan ``workflow_id`` at the next ``tick``."""
        with self._dirty_lock:
            self._dirty.add(workflow_id)

    def mark_all(self, workflow_ids: Iterable[str]) -> None:
        with self._dirty_lock:
            self._dirty.update(workflow_ids)

    @property
    def has_dirty(self) -> bool:
        return bool(self._dirty)

    # ---------------------------------------------------------------- engine lock
    def tick(self) -> None:
        """*Engine lock.* Replan every marked workflow (and those the tracker feed points at)."""
        changed = self._feed.drain()
        tracker = self.workflows.tracker
        if changed:
            for wf in tracker.live_instances():
                graph = tracker.graph_of(wf)
                if any(a in graph for a in changed):
                    self.mark(wf)
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        if not dirty or not self.plans:
            return
        live = set(self.workflows.live_workflows())
        for wf in sorted(dirty):  # a fixed order: the same events give the same queue
            if wf in live:
                due = {d.agent_id: d.steps for d in self.planner.due_agents(wf, self._max_steps)}
                self.protection.replanned(wf, due)
                due_targets = self.planner.due_targets(wf, self._max_steps)
                self.controller.update(wf, self.planner.targets(wf, due=due_targets), due_targets)
                self._planned.add(wf)
            else:
                self.planner.forget(wf)
                self.protection.finished(wf)
                if wf in self._planned:
                    self._planned.discard(wf)
                    self.controller.drop(wf)

    def set_pressure(self, max_steps: int, reserve_pages: int = 0) -> None:
        """*Engine lock.* Apply a pressure mode's ``prefetch_max_steps`` and free-page target
        (without planning, only the free-page target: no mode turns planning on)."""
        if not self.plans:
            self.controller.set_limits(-1, reserve_pages)
            return
        if max_steps != self._max_steps:
            grew = max_steps > self._max_steps
            self._max_steps = max_steps
            if grew:
                self.mark_all(self.workflows.live_workflows())
        self.controller.set_limits(max_steps, reserve_pages)

    def apply_pressure(self, actions: ModeActions) -> None:
        """*Engine lock.* ``memory.pressure.PressureTarget``: the mode's prefetch horizon and free-page target."""
        self.set_pressure(actions.prefetch_max_steps, actions.free_pages(self.cache.device_pool.capacity))

    def note_insert(self, workflow_id: str | None, agent_id: str | None, node: RadixNode,
                    own_pages: int | None = None) -> None:
        """*Engine lock.* A request of ``agent_id`` inserted its KV ending at ``node``, having held
        ``own_pages`` pages beyond the prefix it found cached (prompt and output): the guard's
        estimate for that agent's next request (at admission it had only the prompt's)."""
        self.planner.note_insert(workflow_id, agent_id, node)
        if own_pages is not None:
            self.protection.guard.note_request(agent_id, own_pages)

    def demand(self, node: RadixNode) -> LoadTask | None:
        """*Engine lock.* On-demand load of the host-only part of the path to ``node``."""
        return self.controller.demand(node)

    def claim(self, pages: Iterable[int], workflow_id: str | None = None, agent_id: str | None = None,
              own_pages: int | None = None) -> int:
        """*Engine lock.* A request (of ``agent_id`` in ``workflow_id``) admitted with ``pages``
        cached and ``own_pages`` to allocate beyond them: how many of ``pages`` were unclaimed
        prefetched pages. Claims the protections it used or made moot."""
        used, tasks = self.ledger.claim_tasks(pages)
        self.protection.claimed(tasks, workflow_id, agent_id, own_pages)
        return used

    def release_for_alloc(self) -> bool:
        """*Engine lock.* An allocation found no room: release the least urgent protection, if any."""
        return self.protection.release_for_alloc()

    # ---------------------------------------------------------------- waiting (tests, benchmarks)
    def idle(self) -> bool:
        return not self.has_dirty and self.controller.idle()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self.controller.wait_idle(timeout)
