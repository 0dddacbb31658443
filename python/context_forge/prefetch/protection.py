"""The engine's side of prefetch protection: the simulator's :class:`PrefetchGuard`, fed by the
controller (at reservation) and the engine (admissions, replans, failed allocations).

- Budget: a prefetch that reaches the front of the controller's queue is issued only when
  ``guard.room(pages, busy)`` says so, with ``busy`` the device pages that running requests hold
  plus those the queued requests need (the engine's :class:`Backlog`, the scheduler), and the
  requests of the workflow's other agents due no later, with what their prompts will take
  (``planner.due_footprint`` over the controller's ``due_of``), must fit beside it;
  otherwise it is skipped and counted in ``PrefetchStats.over_budget``.
- Protection: a reserved prefetch locks its target node until its agent's request is admitted
  (``claimed``), a replan no longer lists its agent as due (``replanned``), or its workflow ends
  (``finished``). An agent with a request waiting in the queue keeps its protection through
  replans, and through failed allocations while requests run.
- Failed allocation: an admission (or decode growth) that finds no room releases the protection
  whose agent is due latest and retries (:meth:`Protection.release_for_alloc`).
- Own pages: each admission tells the guard how many pages the request allocated beyond its
  cached prefix (its prompt's), and its end how many it held with its output
  (``WorkflowPrefetcher.note_insert``): the estimate ``room`` counts for that agent's next
  prefetch. Never ``max_tokens``, which chat requests default to the rest of the context.

With ``budget_pages == 0`` nothing is protected and nothing is skipped (the guard is off).
Not thread-safe: every method runs under the engine lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from context_forge.cache.tiered import LoadPlan

from .guard import PrefetchGuard
from .ledger import PrefetchStats
from .planner import PrefetchTarget
from .tasks import LoadTask


class Backlog(Protocol):
    """What the guard needs to know about requests (the engine's scheduler)."""

    def busy_pages(self) -> int:
        """Device pages that running requests hold plus the pages queued requests need."""
        ...

    def waiting_agents(self) -> set[tuple[str, str]]:
        """``(workflow_id, agent_id)`` of every queued request that has both."""
        ...

    def active_agents(self) -> set[tuple[str, str]]:
        """``(workflow_id, agent_id)`` of every running or queued request that has both."""
        ...

    @property
    def running(self) -> Sequence[object]:
        """The requests running now."""
        ...


class Protection:
    """Budget check and protections of landed prefetches (see the module docstring)."""

    def __init__(self, guard: PrefetchGuard, stats: PrefetchStats, backlog: Backlog | None = None) -> None:
        self.guard = guard
        self.stats = stats
        self.backlog = backlog

    @property
    def on(self) -> bool:
        return self.guard.budget_pages > 0

    def _waiting(self) -> set[tuple[str, str]]:
        return self.backlog.waiting_agents() if self.backlog is not None else set()

    # ---------------------------------------------------------------- controller hooks
    def allows(self, task: LoadTask, pages: int, due: Sequence[PrefetchTarget] = ()) -> bool:
        """*Engine lock.* Whether prefetch ``task`` of ``pages`` host-only pages may reserve now;
        ``due``: its workflow's due agents with their target nodes (the controller's `due_of`):
        what the prompts of those due no later will take (`PrefetchGuard.pending_pages`) must fit
        in the pool beside it."""
        if not self.on:
            return True
        backlog = self.backlog
        busy, active = (backlog.busy_pages(), backlog.active_agents()) if backlog is not None else (0, set())
        wf, guard = task.workflow_id, self.guard
        pending = guard.pending_pages(wf, task.agent_id, task.steps, task.node, due, active)
        return guard.room(pages, busy, task.steps, task.prob, task.agent_id, wf, active, pending)

    def reserved(self, task: LoadTask, plan: LoadPlan) -> None:
        """*Engine lock.* ``task`` reserved its pages: protect its target until its request comes."""
        if self.on and task.workflow_id is not None and task.agent_id is not None:
            self.guard.protect(task.id, task.workflow_id, task.agent_id, task.node, len(plan.device_pages),
                               task.steps)

    # ---------------------------------------------------------------- engine events
    def claimed(self, task_ids: Iterable[int], workflow_id: str | None, agent_id: str | None,
                own_pages: int | None = None) -> None:
        """A request was admitted, reusing pages of prefetches ``task_ids`` and allocating
        ``own_pages`` beyond its cached prefix (None: not known, the estimate stays); if it belongs
        to an agent of a workflow, that agent's protections are used (or moot) too."""
        if own_pages is not None:
            self.guard.note_request(agent_id, own_pages)
        for task_id in task_ids:
            self.guard.claimed(task_id)
        if workflow_id is not None and agent_id is not None:
            self.guard.claimed_by(workflow_id, agent_id)

    def replanned(self, workflow_id: str, due: Mapping[str, float]) -> None:
        """The workflow's due agents are ``due`` (agent -> steps): other agents' protections go,
        unless a request of theirs is waiting (then it is due now)."""
        keep = {a: 0.0 for w, a in self._waiting() if w == workflow_id}
        keep.update(due)
        before = self.guard.released_unused
        self.guard.replanned(workflow_id, keep)
        self.stats.released_unused += self.guard.released_unused - before

    def finished(self, workflow_id: str) -> None:
        """The workflow ended: every protection of it goes."""
        before = self.guard.released_unused
        self.guard.replanned(workflow_id, ())
        self.stats.released_unused += self.guard.released_unused - before

    def release_for_alloc(self) -> bool:
        """An allocation found no room: release the least urgent protection not held for a waiting
        request (any protection when no request runs: nothing else would free pages); False when
        there is none to release."""
        if not len(self.guard):
            return False
        running = self.backlog is not None and bool(self.backlog.running)
        released = self.guard.release_least_urgent(keep=self._waiting() if running else ())
        self.stats.released_unused += released
        return released

    def release_all(self) -> None:
        self.guard.release_all()

    @property
    def protected_pages(self) -> int:
        return self.guard.pages
