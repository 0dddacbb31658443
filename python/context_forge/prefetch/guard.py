"""Prefetched KV stays on the device until its request comes: protection and a page budget.

Without protection a prefetch lands, and the next admission, which evicts the lowest-ranked
nodes, may take it again before the agent runs: the prefetch is repeated at the next replan and
wasted again (151 of 160 prefetches with 16 concurrent workflows). `PrefetchGuard` locks the
target node of every landed (or landing) prefetch, so only its own request, or a decision that it
is no longer due, lets it go:

- ``claimed(task)``: a request admitted with the prefetch's pages (the request now holds them);
- ``replanned(workflow, due)``: a replan of the workflow no longer lists the prefetch's agent among
  the due ones (the plan changed: another branch was taken), or the workflow finished (``due``
  empty);
- ``release_least_urgent()``: an admission found no room; protection never blocks a request that
  could run without it, so the protection whose agent is due latest (the newest among equals)
  gives way first.

``budget_pages`` bounds the pages held at once (a prefetch that does not fit is not issued,
unless nothing is held): a quarter of the device pool by default, so that prefetching for agents
due soon never crowds out the requests running now, and :meth:`room` also leaves the pages that
running and queued requests need (measured in the simulator: without that, with a fan-out of
large workers at 20 % of the working set, 96 % of prefetched tokens were released and evicted
before use and the makespan was 3 % above lru's). A prefetch is of use only if its request fits
beside it too, so :meth:`room` also counts, for it and for every held one, the pages the agent's
latest request allocated beyond its cached prefix (:meth:`note_request`), and the requests of the
other agents of its workflow due no later (from the latest replan), which arrive first or with it,
must fit in the pool beside all that, with the host-only pages of their targets. Not thread-safe:
call under the lock that guards the cache.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from context_forge.cache.node import RadixNode
from context_forge.cache.tiered import RadixCache

from .planner import PrefetchTarget, due_footprint

__all__ = ["DEEP_HEADROOM", "HEADROOM", "PrefetchGuard"]

HEADROOM = 0.9
"""Share of the device pool that busy pages plus protected prefetches may fill with a prefetch for
an agent due at the next step: the rest absorbs decode growth and the next arrivals without
evicting a prefetch."""

DEEP_HEADROOM = 0.4
"""The same share for an agent due one step or more later: requests of other agents and
workflows arrive before it runs, and an admission short of room releases protections (measured
with ``benchmarks/rank_sweep.py``: with 0.9 for every target, 24.8 % of all prefetched tokens were
wasted, most of them released for an admission; with 0.5 beyond the next step, 20.2 %, and no
makespan longer; 0.5 -> 0.4, once the planner's target cuts were in: 13.1 % -> 13.0 %, with
``template`` defaults 20 % 26 % -> 17 % and its makespan 1.0013x -> 1.0037x of lru's; 0.3 wasted
12.7 % but left ``fanout/agentic`` 40 % just over 25 % and made ``peer/agentic`` 20 % slower)."""


@dataclass
class _Held:
    workflow_id: str
    agent_id: str
    node: RadixNode
    pages: int
    steps: float
    own: int


class PrefetchGuard:
    """Locks prefetch targets until their request is admitted (see the module docstring)."""

    def __init__(self, tree: RadixCache, budget_pages: int) -> None:
        if budget_pages < 0:
            raise ValueError(f"budget_pages must be >= 0, got {budget_pages!r}")
        self.tree = tree
        self.budget_pages = budget_pages
        self._held: OrderedDict[int, _Held] = OrderedDict()
        self.pages = 0
        self.released_unused = 0
        self.own_pages = 0
        self._own: dict[str, int] = {}
        self._due: dict[str, dict[str, float]] = {}

    def note_request(self, agent_id: str | None, own_pages: int) -> None:
        """A request of ``agent_id`` allocated ``own_pages`` pages beyond its cached prefix (its new
        prompt tokens and its output; the engine tells the prompt's at admission and the whole at
        its end): the estimate for that agent's next request."""
        if agent_id is not None:
            self._own[agent_id] = own_pages

    def own_estimate(self, agent_id: str | None) -> int:
        """Pages the next request of ``agent_id`` is expected to allocate beyond its cached prefix."""
        return self._own.get(agent_id, 0) if agent_id is not None else 0

    def ahead_pages(self, workflow_id: str | None, agent_id: str | None, steps: float,
                    active: Collection[tuple[str, str]] = ()) -> int:
        """Pages the next requests of the workflow's other agents due within ``steps`` steps (as
        of its latest replan) are expected to allocate; agents in ``active`` (a request running or
        queued: counted in ``busy``) and protected ones (counted with their protection) left out."""
        due = self._due.get(workflow_id) if workflow_id is not None else None
        if not due:
            return 0
        held = {(h.workflow_id, h.agent_id) for h in self._held.values()}
        total = 0
        for agent, agent_steps in due.items():
            key = (workflow_id, agent)
            if agent != agent_id and agent_steps <= steps and key not in active and key not in held:
                total += self.own_estimate(agent)
        return total

    def pending_pages(self, workflow_id: str | None, agent_id: str | None, steps: float, node: RadixNode,
                      due: Sequence[PrefetchTarget], active: Collection[tuple[str, str]] = ()) -> int:
        """`room`'s ``pending_pages`` for a prefetch of ``node`` for ``agent_id``: what the prompts of
        the workflow's other agents in ``due`` (its `PrefetchPlanner.due_targets`) due within
        ``steps`` steps will take (`due_footprint`); agents in ``active`` and protected ones left
        out, as in `ahead_pages`."""
        held = {(h.workflow_id, h.agent_id) for h in self._held.values()}
        others = [d.node for d in due if d.agent_id != agent_id and d.steps <= steps
                  and (workflow_id, d.agent_id) not in active and (workflow_id, d.agent_id) not in held]
        return due_footprint(node, others, self.tree.page_size) if others else 0

    def room(self, pages: int, busy_pages: int = 0, steps: float = 0.0, prob: float = 1.0,
             agent_id: str | None = None, workflow_id: str | None = None,
             active: Collection[tuple[str, str]] = (), pending_pages: int = 0) -> bool:
        """Whether a prefetch of ``pages`` pages for an agent due in ``steps`` steps with
        probability ``prob`` (1 for a declared graph, the predictor's below) should be issued now.

        ``busy_pages``: device pages that running requests hold and queued requests will need;
        they are admitted before the prefetch's agent, and an admission short of room releases
        protections, so a prefetch that does not fit beside them would be evicted before use. With
        the pages its own request (``agent_id``'s estimate) and the held prefetches' requests will
        allocate, it must fit within ``HEADROOM`` of the pool when its agent is due at the next step,
        ``DEEP_HEADROOM`` when later, either times ``prob`` (an unlikely agent gets little room);
        a predicted agent beyond the next call is not loaded at all (in the rank sweep that halved
        the wasted share of several undeclared shapes). With ``workflow_id``, the requests of its
        other agents due no later (`ahead_pages`; ``active``: ``(workflow, agent)`` with a request
        running or queued) must fit in the whole pool beside that: 32 workers due at once that
        do not fit beside each other arrive in no order a plan knows, and the first to come
        release the protections of the others (measured with ``benchmarks/rank_sweep.py``:
        ``wide-one-at-a-time`` 20 % wasted 32 % -> 23 % of prefetched tokens, makespan unchanged;
        within ``HEADROOM`` instead of the whole pool, ``template`` defaults 20 % lost its small
        worker prefetches and its gain over lru). ``pending_pages``, what the prompts of the
        workflow's other agents due no later will take when their requests come
        (`planner.due_footprint`: their host-only pages, loaded then, and their device pages that
        nothing locks, pinned then; not those running, queued or protected), joins that check:
        with 16 workers due at once, each prefetch that fits alone was released when the others'
        prompts were loaded back or pinned (``rank_sweep``: counting only the host-only pages of
        the other targets, ``wide-16-overlap`` 40 % went 1.019x -> 1.044x of lru's makespan,
        ceiling 1.070x, and ``wide-one-at-a-time`` 20 % wasted 21 % -> 10 %; counting the device
        pages too, ``wide-16-overlap`` 20 % wasted 39 % -> 7 % of prefetched tokens and its
        makespan went 1.038x -> 1.040x, ceiling 1.350x). Within that, protections stay under
        ``budget_pages``; one always fits while none is held, so a prompt larger than the budget
        can still be prefetched on its own."""
        if steps >= 1 and prob < 1.0:
            return False
        head = (HEADROOM if steps < 1 else DEEP_HEADROOM) * prob
        need = busy_pages + self.pages + self.own_pages + pages + self.own_estimate(agent_id)
        capacity = self.tree.device_pool.capacity
        if need > head * capacity:
            return False
        if need + pending_pages + self.ahead_pages(workflow_id, agent_id, steps, active) > capacity:
            return False
        return not self._held or self.pages + pages <= self.budget_pages

    def protect(self, task_id: int, workflow_id: str, agent_id: str, node: RadixNode, pages: int,
                steps: float = 0.0) -> None:
        """Hold ``node`` (and its ancestors) on the device for prefetch ``task_id`` of an agent due
        in ``steps`` steps."""
        if task_id in self._held:
            return
        self.tree.lock(node)
        own = self.own_estimate(agent_id)
        self._held[task_id] = _Held(workflow_id, agent_id, node, pages, steps, own)
        self.pages += pages
        self.own_pages += own

    def holds(self, workflow_id: str, agent_id: str) -> bool:
        return any(h.workflow_id == workflow_id and h.agent_id == agent_id for h in self._held.values())

    def claimed(self, task_id: int) -> None:
        """A request admitted with the prefetch's pages: it holds them now."""
        self._release(task_id)

    def claimed_by(self, workflow_id: str, agent_id: str) -> None:
        """``agent_id`` of ``workflow_id`` was admitted: its prefetches are used (or moot)."""
        for task_id, held in list(self._held.items()):
            if held.workflow_id == workflow_id and held.agent_id == agent_id:
                self._release(task_id)

    def replanned(self, workflow_id: str, due: Collection[str] | Mapping[str, float]) -> None:
        """The workflow's due agents are now ``due``: protections of other agents go. A mapping
        gives each due agent's steps, which the kept protections take and `ahead_pages` reads."""
        if isinstance(due, Mapping) and due:
            self._due[workflow_id] = dict(due)
        else:
            self._due.pop(workflow_id, None)
        for task_id, held in list(self._held.items()):
            if held.workflow_id != workflow_id:
                continue
            if held.agent_id not in due:
                self._release(task_id, unused=True)
            elif isinstance(due, Mapping):
                held.steps = due[held.agent_id]

    def release_least_urgent(self, keep: Collection[tuple[str, str]] = ()) -> bool:
        """Give up one protection (an admission needs room) whose ``(workflow, agent)`` is not in
        ``keep`` (agents with a request waiting in the queue): the one whose agent is due latest,
        the newest among equals (the planner issues the most urgent first); False if there is none.
        Measured with ``benchmarks/rank_sweep.py``, against releasing the oldest: with the own-pages
        estimate in :meth:`room`, wasted prefetch 11.1 % -> 10.5 % of prefetched tokens.
        Callers keep queued agents' protections only while requests run (whose pages come back);
        with none running, the request that needs the room could otherwise wait forever."""
        order = sorted(enumerate(self._held.items()), key=lambda e: (-e[1][1].steps, -e[0]))
        for _, (task_id, held) in order:
            if (held.workflow_id, held.agent_id) not in keep:
                self._release(task_id, unused=True)
                return True
        return False

    def release_all(self) -> None:
        while self.release_least_urgent():
            pass

    def task_ids(self) -> list[int]:
        """Protected prefetches, oldest first."""
        return list(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def _release(self, task_id: int, unused: bool = False) -> None:
        held = self._held.pop(task_id, None)
        if held is None:
            return
        self.tree.unlock(held.node)
        self.pages -= held.pages
        self.own_pages -= held.own
        self.released_unused += unused
