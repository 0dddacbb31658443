"""The prefetch controller: a priority queue of load tasks served by one background thread.

Locks. ``lock`` is the engine lock that guards the radix cache (and the workflows whose
priorities its policy reads); the controller's own condition guards the queue. Order: engine
lock, then the condition; the worker never waits for the engine lock while holding the
condition, and copies run holding neither. Methods marked *engine lock* expect the caller to
hold ``lock`` (the engine's step does; tests take it).

A prefetch reserves device pages (``RadixCache.begin_load``) only when the worker takes it,
with the target node's policy key as the eviction limit: it fills free pages, or pages of nodes
the policy ranks below the target (less urgent agents), never more valuable ones; and it leaves
``reserve_pages`` free (the pressure controller's free-page target) so prefetching never undoes
proactive eviction. A queued prefetch holds nothing, so cancelling it is free; a prefetch that
has started copying runs to completion (one 4k-token Llama-3-8B prefix is about 12 ms of copying),
but yields to on-demand loads at the copier's interrupt points (between layers, or between page
chunks with the ``direct`` copier).

An on-demand load (a request that found its prefix on the host) is reserved at once by
:meth:`PrefetchController.demand`, jumps the queue, and interrupts a running prefetch at its next
interrupt point: the worker runs every queued demand, then resumes the prefetch.

With ``layer_gates`` every load carries a :class:`~context_forge.prefetch.gate.LayerGate` on its
ticket, so the engine can admit a request whose prefix is still landing and let the model wait
per layer; ``on_issued`` tells the engine when a gated load has issued its last layer.

A copy that fails (a device error) leaves its nodes marked loading forever (never served) and
records the error in ``error``; the engine checks it and fails loudly.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from context_forge.cache.node import RadixNode
from context_forge.cache.tiered import LoadPlan, RadixCache

from .ledger import PrefetchLedger, PrefetchStats
from .planner import PrefetchTarget, host_only_pages, node_is_live
from .tasks import ControllerConfig, LoadTask, TaskKind, TaskQueue, TaskState

if TYPE_CHECKING:
    from .copier import PageCopier
    from .protection import Protection

__all__ = ["ControllerConfig", "PrefetchController"]

log = logging.getLogger(__name__)


class PrefetchController:
    """Serves load tasks on a background thread (see the module docstring)."""

    def __init__(self, cache: RadixCache, copier: PageCopier, lock: threading.RLock,
                 config: ControllerConfig | None = None, stats: PrefetchStats | None = None,
                 on_complete: Callable[[LoadTask], None] | None = None) -> None:
        if cache.host_pool is None:
            raise ValueError("PrefetchController needs a RadixCache with a host pool")
        if copier.device_kv.num_pages != cache.device_pool.capacity:
            raise ValueError(f"copier device buffer has {copier.device_kv.num_pages} pages, the cache's "
                             f"device pool {cache.device_pool.capacity}")
        self.cache = cache
        self.copier = copier
        self.lock = lock
        self.config = config or ControllerConfig()
        self.stats = stats or PrefetchStats()
        self.ledger = PrefetchLedger(self.stats)
        self.on_complete = on_complete
        self.on_issued: Callable[[], None] | None = None
        """Called on the worker thread when a gated load has issued every layer (the engine wakes)."""
        self.max_steps: float = math.inf
        self.reserve_pages = 0
        self.protection: Protection | None = None
        """Budget and protection of prefetches (``prefetch.protection``); ``None``: neither."""
        self.error: BaseException | None = None
        self.history: list[LoadTask] = []
        self._cv = threading.Condition(threading.Lock())
        self._queue = TaskQueue()
        self._by_workflow: dict[str, dict[int, LoadTask]] = {}
        self._due: dict[str, list[PrefetchTarget]] = {}
        self._running: LoadTask | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cv:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="context-forge-prefetch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Cancel queued prefetches, finish queued on-demand loads and the running task, and join
        the worker. Call without holding the engine lock (the worker needs it to finish)."""
        with self._cv:
            self._stopping = True
            for task in self._queue.tasks():
                if task.kind is TaskKind.PREFETCH:
                    self._cancel_queued(task, "controller stopped")
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cv:
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- engine-facing (engine lock)
    def update(self, workflow_id: str, targets: Sequence[PrefetchTarget],
               due: Sequence[PrefetchTarget] = ()) -> list[LoadTask]:
        """*Engine lock.* Make ``targets`` the queued prefetches of ``workflow_id``: new targets are
        queued, kept ones re-ranked, queued ones no longer wanted cancelled (the workflow moved on).
        ``due``: every due agent of the workflow with its target node (the planner's
        `due_targets`), kept for `due_of`. Returns the workflow's live (queued or running) tasks;
        none without ``config.plan``."""
        if not self.config.plan:
            targets = due = ()
        with self._cv:
            if due:
                self._due[workflow_id] = list(due)
            else:
                self._due.pop(workflow_id, None)
            old = self._by_workflow.pop(workflow_id, {})
            live: dict[int, LoadTask] = {}
            for t in targets:
                if t.steps > self.max_steps or t.node.id in live:
                    continue
                task = old.pop(t.node.id, None)
                if task is not None and not task.state.final:
                    if task.state is TaskState.QUEUED and (task.steps, task.prob) != (t.steps, t.prob):
                        task.steps, task.prob, task.agent_id = t.steps, t.prob, t.agent_id
                        self._queue.push(task)
                else:
                    task = LoadTask(TaskKind.PREFETCH, t.node, t.steps, t.prob, workflow_id, t.agent_id)
                    self._queue.push(task)
                live[t.node.id] = task
            for task in old.values():
                if task.state is TaskState.QUEUED:
                    self._cancel_queued(task, "no longer due")
            if live:
                self._by_workflow[workflow_id] = live
            self._cv.notify_all()
            return list(live.values())

    def due_of(self, workflow_id: str | None) -> list[PrefetchTarget]:
        """*Engine lock.* The workflow's due agents with their target nodes, as of its latest
        replan (what `Protection.allows` measures a prefetch's siblings by)."""
        if workflow_id is None:
            return []
        with self._cv:
            return list(self._due.get(workflow_id, ()))

    def drop(self, workflow_id: str) -> None:
        """*Engine lock.* The workflow ended: cancel its queued prefetches."""
        self.update(workflow_id, ())

    def set_limits(self, max_steps: float, reserve_pages: int = 0) -> None:
        """*Engine lock.* Pressure: prefetch only agents ``<= max_steps`` steps away (``-1``: none;
        queued prefetches beyond it are cancelled) and keep ``reserve_pages`` device pages free."""
        with self._cv:
            tighter = max_steps < self.max_steps
            self.max_steps = max_steps
            self.reserve_pages = max(0, int(reserve_pages))
            if tighter:
                for task in self._queue.tasks():
                    if task.kind is TaskKind.PREFETCH and task.steps > max_steps:
                        self._cancel_queued(task, "pressure")

    def demand(self, node: RadixNode) -> LoadTask | None:
        """*Engine lock.* Load the host-only part of the path to ``node`` now, ahead of every
        prefetch. Reserves device pages at once (evicting like an on-demand load-back); ``None``
        when nothing is host-only or there is no room. Wait on ``task.finished`` or poll
        ``node.is_loading``."""
        plan = self.cache.begin_load(node)
        if plan is None:
            return None
        task = LoadTask(TaskKind.DEMAND, node, plan=plan)
        self._arm(task, plan)
        with self._cv:
            self.stats.demand_loads += 1
            self.stats.demand_pages += len(plan.device_pages)
            self._queue.push(task)
            self._cv.notify_all()
        return task

    # ---------------------------------------------------------------- queries
    def queued(self) -> list[LoadTask]:
        with self._cv:
            return self._queue.tasks()

    @property
    def running(self) -> LoadTask | None:
        return self._running

    def idle(self) -> bool:
        with self._cv:
            return not self._queue and self._running is None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is queued or running (or ``timeout`` seconds); returns whether it
        went idle without a failure."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None or not self.alive:
                    return False
                self._cv.wait(min(left, 0.05))
            return self.error is None

    # ---------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                task = self._queue.pop()
                if task is None:
                    return
                self._running = task
            try:
                self._execute(task)
            except BaseException as exc:  # a device failure: keep the nodes unusable, report it
                log.exception("prefetch task %r failed", task)
                self.error = exc
                self._finish(task, TaskState.FAILED, repr(exc))
                with self._cv:
                    self._stopping = True
                    for t in self._queue.tasks():
                        self._queue.discard(t)
                        t.state, t.reason = TaskState.CANCELLED, "controller failed"
                        t.finished.set()
                    self._running = None
                    self._cv.notify_all()
                return
            with self._cv:
                self._running = None
                self._cv.notify_all()

    def _execute(self, task: LoadTask) -> None:
        if task.kind is TaskKind.PREFETCH:
            with self.lock:
                plan = self._reserve(task)
            if plan is None:
                return
        else:
            with self._cv:
                task.state = TaskState.RUNNING
        assert task.plan is not None
        plan = task.plan
        interrupt = self._run_demands if task.kind is TaskKind.PREFETCH else None
        self.copier.load(plan.host_pages, plan.device_pages, interrupt, plan.ticket.gate,  # type: ignore[arg-type]
                         kind=task.kind.value)
        if self.copier.meter is not None:
            self.copier.meter.poll()
        with self.lock:
            self.cache.finish_loading(plan.ticket, plan.nodes)
            if task.kind is TaskKind.PREFETCH:
                self.ledger.add(task.id, plan.device_pages)
                self.stats.completed += 1
                self.stats.bytes += len(plan.device_pages) * self.copier.bytes_per_page
        self._finish(task, TaskState.DONE)

    def _reserve(self, task: LoadTask) -> LoadPlan | None:
        """Under the engine lock: re-check a prefetch that reached the front and reserve its pages."""
        with self._cv:
            if task.state is not TaskState.QUEUED:
                return None
            if task.steps > self.max_steps:
                self._cancel_queued(task, "pressure")
                return None
            task.state = TaskState.RUNNING
            reserve = self.reserve_pages
        cache, node = self.cache, task.node
        if not node_is_live(node, cache.page_size):
            self._skip(task, "node evicted")
            return None
        need = host_only_pages(node)
        if need == 0:
            self._skip(task, "already on device")
            return None
        if self.protection is not None and not self.protection.allows(task, need, self.due_of(task.workflow_id)):
            self.stats.over_budget += 1
            self._skip(task, "over budget")
            return None
        limit = cache.policy.prefetch_limit(node)
        pool = cache.device_pool
        want = need + reserve
        if pool.num_free < want:
            cache.lock(node)
            try:
                cache.evict_device(want - pool.num_free, limit)
            finally:
                cache.unlock(node)
            if pool.num_free < want:
                self._skip(task, "no room")
                return None
        plan = cache.begin_load(node, limit)
        if plan is None:
            self._skip(task, "no room")
            return None
        self._arm(task, plan)
        task.plan = plan
        if self.protection is not None:
            self.protection.reserved(task, plan)
        self.stats.issued += 1
        self.stats.pages += len(plan.device_pages)
        return plan

    def _arm(self, task: LoadTask, plan: LoadPlan) -> None:
        plan.ticket.event = task.finished
        if self.config.layer_gates:
            gate = self.copier.new_gate()
            gate.on_issued = self._issued
            plan.ticket.gate = gate

    def _issued(self) -> None:
        hook = self.on_issued
        if hook is not None:
            hook()

    def _skip(self, task: LoadTask, reason: str) -> None:
        self.stats.skipped += 1
        self._finish(task, TaskState.SKIPPED, reason)

    def _run_demands(self) -> None:
        """Interrupt point of a running prefetch: run every queued on-demand load first."""
        interrupted = False
        while True:
            with self._cv:
                task = self._queue.pop(TaskKind.DEMAND)
            if task is None:
                break
            if not interrupted:
                interrupted = True
                self.stats.interrupts += 1
            self._execute(task)

    def _cancel_queued(self, task: LoadTask, reason: str) -> None:
        """With the condition held: cancel a queued task."""
        self._queue.discard(task)
        task.state, task.reason = TaskState.CANCELLED, reason
        self.stats.cancelled += 1
        self._remember(task)
        task.finished.set()

    def _finish(self, task: LoadTask, state: TaskState, reason: str = "") -> None:
        with self._cv:
            task.state, task.reason = state, reason
            self._remember(task)
            if task.workflow_id is not None:
                live = self._by_workflow.get(task.workflow_id)
                if live is not None and live.get(task.node.id) is task:
                    del live[task.node.id]
                    if not live:
                        del self._by_workflow[task.workflow_id]
        task.finished.set()
        if self.on_complete is not None and state is TaskState.DONE:
            self.on_complete(task)

    def _remember(self, task: LoadTask) -> None:
        keep = self.config.history
        if keep:
            self.history.append(task)
            if len(self.history) > keep:
                del self.history[:len(self.history) - keep]
