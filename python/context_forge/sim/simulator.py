"""Closed-loop, trace-driven simulation of one serving GPU with a two-tier workflow-aware KV cache.

The simulated engine uses the real cache core (:class:`context_forge.cache.RadixCache`) and the
real workflow state (:class:`context_forge.workflow.live.LiveWorkflows`); only time is
modelled (:class:`~context_forge.sim.cost_model.CostModel`). Each iteration either admits waiting
requests and runs their prefill (one step, up to ``chunked_prefill_size`` new tokens), or runs
decode steps for the running batch until the next event. A request is sent when everything in its
``after`` list finished plus ``delay_s`` (roots at ``arrival_s``); it holds device pages for its
prompt and output from admission to completion. Right after its prefill its prompt's whole pages
are inserted into the cache (locked until it completes), as the engine does, so requests admitted
later share them.

Transfers: an admitted request whose prefix is on the host only loads it back at once (an
on-demand load: it pre-empts queued prefetches, and the GPU stalls for it). With
``load_ahead_step`` > 0 (kvflow / pbkv), after every request completion the agents of its workflow
due within that many steps (declared graph) or likely within it (predictor, pbkv) get the
host-only part of their last prompt loaded in the background, sharing the host->device link but
overlapping compute; a request that arrives before its prefetch completes stalls only for the
remainder.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from context_forge.cache import (
    CountingTransfer, LoadTicket, PagePool, PolicyContext, RadixCache, RadixNode, build_policy, policy_class,
)
from context_forge.trace.records import Trace
from context_forge.prefetch.guard import PrefetchGuard
from context_forge.prefetch.planner import DEFAULT_MIN_PROB, PlannerConfig, PrefetchPlanner, host_only_pages
from context_forge.workflow.graph import WorkflowGraph
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.scope import scope_key

from .cost_model import CostModel
from .oracle import BeladyOracle, ideal_times
from .stats import SimResult, StatsCollector


class SimError(RuntimeError):
    """The trace cannot be replayed under this configuration (e.g. a request larger than the device)."""


class _DevicePool(PagePool):
    """The real device pool, telling the simulator which pages are freed (prefetch-waste accounting)."""

    def __init__(self, capacity: int, on_free: Callable[[list[int]], None]) -> None:
        super().__init__(capacity, "device")
        self._on_free = on_free

    def free(self, pages: list[int]) -> None:
        self._on_free(pages)
        super().free(pages)


@dataclass
class SimConfig:
    policy: str
    device_tokens: int
    host_tokens: int
    page_size: int = 16
    load_ahead_step: int = 2
    evict_pri_level: int = 4
    blend_weight: float = 0.6
    write_policy: str = "write_back"
    chunked_prefill_size: int = 8192
    max_running: int = 256
    prefetch_min_prob: float = DEFAULT_MIN_PROB
    prefetch_budget: float = 0.25
    """Fraction of the device pool that protected (landed, not yet used) prefetches may hold; 0
    turns protection off (prefetched KV is then evictable as soon as it lands)."""
    scope_by_workflow: bool = True
    """Tag nodes with (workflow, agent) and rank them by cache.usage's rules (see workflow.scope);
    False tags bare agent names on every node a request uses (an ablation: no per-instance ranks)."""

    def validate(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.device_tokens < self.page_size:
            raise ValueError(f"device_tokens ({self.device_tokens}) must hold at least one page ({self.page_size})")
        if self.host_tokens < 0:
            raise ValueError(f"host_tokens must be >= 0, got {self.host_tokens}")
        if self.load_ahead_step < 0:
            raise ValueError(f"load_ahead_step must be >= 0, got {self.load_ahead_step}")
        if not 0.0 <= self.prefetch_budget <= 1.0:
            raise ValueError(f"prefetch_budget must be in [0, 1], got {self.prefetch_budget}")


@dataclass
class _Running:
    idx: int
    node: RadixNode
    prefix_pages: list[int]
    own_pages: list[int]
    remaining: int
    ctx: int


class Simulator:
    def __init__(self, trace: Trace, config: SimConfig, cost: CostModel | None = None) -> None:
        config.validate()
        self.trace = trace
        self.cfg = config
        self.cost = cost or CostModel()
        self.reqs = trace.requests
        self.vocab = trace.meta.vocab_size
        index = {r.id: i for i, r in enumerate(self.reqs)}
        self.after = [[index[a] for a in r.after] for r in self.reqs]
        self.children: list[list[int]] = [[] for _ in self.reqs]
        for i, deps in enumerate(self.after):
            for d in deps:
                self.children[d].append(i)
        self.workflows = LiveWorkflows(weight=config.blend_weight)
        self.oracle: BeladyOracle | None = None
        self.prefetched: set[int] = set()
        ps = config.page_size
        self.cache = RadixCache(
            ps, _DevicePool(config.device_tokens // ps, self._on_device_free),
            PagePool(config.host_tokens // ps, "host") if config.host_tokens >= ps else None,
            self._make_policy(), CountingTransfer(), config.write_policy)
        self.workflows.add_finish_listener(self.cache.forget_workflow)
        self.prefetch_on = (policy_class(config.policy).prefetches and config.load_ahead_step > 0
                            and self.cache.host_pool is not None)
        self.repeating = trace.repeating_workflows()
        self.wf_left: dict[str, int] = {}
        for r in self.reqs:
            self.wf_left[r.workflow_id] = self.wf_left.get(r.workflow_id, 0) + 1
        self.stats = StatsCollector(config.policy, len(self.reqs))

    def _tag(self, r) -> str:
        """What the cache records on the nodes a request uses (see workflow.scope)."""
        return scope_key(r.workflow_id, r.agent_id) if self.cfg.scope_by_workflow else r.agent_id

    def _make_policy(self):
        cls, cfg = policy_class(self.cfg.policy), self.cfg
        oracle = None
        if cls.needs_oracle:
            c = self.cost
            service = [c.prefill_time(r.prompt_len, 0) + r.output_tokens * c.decode_step_time(1, r.prompt_len)
                       for r in self.reqs]
            times = ideal_times(self.after, [r.delay_s for r in self.reqs], [r.arrival_s for r in self.reqs], service)
            oracle = self.oracle = BeladyOracle((r.tokens(self.vocab) for r in self.reqs), times, cfg.page_size)
        return build_policy(cfg.policy, PolicyContext(self.workflows, cfg.evict_pri_level, oracle))

    # ------------------------------------------------------------------ main loop
    def run(self) -> SimResult:
        wall = time.perf_counter()
        self.now = 0.0
        self.link_free = 0.0
        self.ready: list[tuple[float, int]] = [(r.arrival_s, i) for i, r in enumerate(self.reqs) if not r.after]
        heapq.heapify(self.ready)
        self.deps_left = [len(a) for a in self.after]
        self.waiting: deque[int] = deque()
        self.running: list[_Running] = []
        self.loads: list[tuple[float, int, LoadTicket, list[RadixNode]]] = []
        self._load_ids = itertools.count()
        self.prefetched = set()
        self.planner = PrefetchPlanner(self.workflows, self.cache, PlannerConfig(
            self.cfg.load_ahead_step, use_predictor=policy_class(self.cfg.policy).plans_undeclared,
            min_prob=self.cfg.prefetch_min_prob))
        self.guard = PrefetchGuard(self.cache, int(self.cfg.prefetch_budget * self.cache.device_pool.capacity))
        self.send_time = [0.0] * len(self.reqs)
        self.done = 0
        while self.done < len(self.reqs):
            self._release(self.now)
            if self._admit():
                continue
            if self.running:
                self._decode()
                continue
            if self.ready:
                self.now = max(self.now, self.ready[0][0])
                continue
            if self.loads:
                self.now = max(self.now, self.loads[0][0])
                continue
            head = self.reqs[self.waiting[0]] if self.waiting else None
            raise SimError(
                f"request {head.id if head else '?'} cannot be admitted: it needs "
                f"{self._pages_needed(self.waiting[0]) if head else '?'} device pages, the device holds "
                f"{self.cache.device_pool.capacity}")
        self.guard.release_all()
        self.stats.prefetch_wasted_tokens += len(self.prefetched) * self.cfg.page_size
        self.prefetched.clear()
        self.cache.check(external_device_pages=0)
        return self.stats.result(self.now, self.cache, time.perf_counter() - wall, self.cfg)

    def _pages_needed(self, i: int) -> int:
        r = self.reqs[i]
        return -(-(r.prompt_len + r.output_tokens) // self.cfg.page_size)

    def _release(self, now: float) -> None:
        while self.loads and self.loads[0][0] <= now:
            _, _, ticket, nodes = heapq.heappop(self.loads)
            self.cache.finish_loading(ticket, nodes)
        while self.ready and self.ready[0][0] <= now:
            t, i = heapq.heappop(self.ready)
            self._send(i, t)

    def _send(self, i: int, t: float) -> None:
        r = self.reqs[i]
        wf = r.workflow_id
        graph = self.trace.workflows.get(wf)
        if graph is not None and wf not in self.workflows.tracker:
            if wf in self.repeating:
                graph = WorkflowGraph(graph.agents, repeat=True)
            self.workflows.register(wf, graph)
        self.workflows.on_request(wf, r.agent_id)
        self.send_time[i] = t
        self.waiting.append(i)

    # ------------------------------------------------------------------ admission + prefill
    def _admit(self) -> bool:
        cache, cost, ps = self.cache, self.cost, self.cfg.page_size
        budget = self.cfg.chunked_prefill_size
        compute = stall = load_s = 0.0
        admitted: list[_Running] = []
        while self.waiting and len(self.running) + len(admitted) < self.cfg.max_running and budget > 0:
            i = self.waiting[0]
            r = self.reqs[i]
            tokens = r.tokens(self.vocab)
            if self.oracle is not None:
                self.oracle.started(i)
            m = cache.match(tokens, agent_id=self._tag(r))
            cache.lock(m.last_node)
            device_hit, host_hit = m.device_len, m.host_len
            for node in m.nodes:
                if node.is_loading:
                    stall = max(stall, node.loading.ready_at - self.now)  # type: ignore[union-attr]
            loaded = 0
            if host_hit:
                loaded = cache.load_back(m.last_node)
                while not loaded and self.guard.release_least_urgent(self._waiting_agents()):
                    loaded = cache.load_back(m.last_node)  # the request being admitted outranks a prefetch
                if loaded:
                    before = stall
                    stall = self._on_demand_load(loaded, stall)
                    load_s += stall - before
                m = cache.match(tokens, touch=False)
            cached = m.device_len
            own = cache.alloc_device(self._pages_needed(i) - cached // ps)
            while own is None and self.guard.release_least_urgent(self._waiting_agents()):
                own = cache.alloc_device(self._pages_needed(i) - cached // ps)
            if own is None:
                cache.unlock(m.last_node)
                if self.oracle is not None:
                    self.oracle.unstart(i, tokens, self.oracle.times[i])
                break
            self.waiting.popleft()
            self.guard.claimed_by(r.workflow_id, r.agent_id)
            self.guard.note_request(r.agent_id, len(own))
            prefetch_hit = 0
            if self.prefetched:
                used = self.prefetched.intersection(m.device_pages)
                self.prefetched -= used
                prefetch_hit = len(used) * ps
            new = r.prompt_len - cached
            compute += cost.prefill_time(new, cached)
            budget -= new
            self.stats.admitted(r.prompt_len, device_hit, host_hit, loaded, new, prefetch_hit)
            admitted.append(_Running(i, m.last_node, list(m.device_pages), own, r.output_tokens, r.prompt_len))
        if not admitted:
            # The head request loaded its host prefix, then found no room: the transfer still
            # took link and GPU time (as in the engine, the loaded prefix stays cached).
            self.stats.stall_s += load_s
            self.now += load_s
            return False
        self.stats.stall_s += stall
        self.now += stall + compute
        finished = []
        for run in admitted:
            self._share(run)
        for run in admitted:
            run.remaining -= 1
            run.ctx += 1
            self.stats.first_token(run.idx, self.now - self.send_time[run.idx])
            (finished if run.remaining <= 0 else self.running).append(run)
        for run in finished:
            self._finish(run)
        return True

    def _waiting_agents(self) -> set[tuple[str, str]]:
        """``(workflow, agent)`` of queued requests: their protections outlast an admission's need
        for room while requests run (as the engine's ``Protection`` keeps them); none when nothing
        runs, since no finishing request would free the pages the head of the queue waits for."""
        if not self.running:
            return set()
        return {(self.reqs[i].workflow_id, self.reqs[i].agent_id) for i in self.waiting}

    def _on_demand_load(self, tokens: int, stall: float) -> float:
        """A synchronous load starts now, ahead of queued prefetches (which it delays)."""
        dur = self.cost.load_time(tokens)
        start = self.now + stall
        shifted = [(t + dur, s, ticket, nodes) for t, s, ticket, nodes in self.loads]
        for t, _, ticket, _ in shifted:
            ticket.ready_at = t
        self.loads = shifted
        heapq.heapify(self.loads)
        self.link_free = max(self.link_free, start) + dur
        self.stats.loaded_tokens_time += dur
        return stall + dur

    # ------------------------------------------------------------------ decode + completion
    def _decode(self) -> None:
        batch = len(self.running)
        ctx = sum(r.ctx for r in self.running)
        step = self.cost.decode_step_time(batch, ctx + batch * 0.5)
        k = min(r.remaining for r in self.running)
        if self.ready and step > 0:
            k = min(k, max(1, math.ceil((self.ready[0][0] - self.now) / step)))
        step = self.cost.decode_step_time(batch, ctx + batch * k / 2)
        self.now += k * step
        still = []
        finished = []
        for run in self.running:
            run.remaining -= k
            run.ctx += k
            (finished if run.remaining <= 0 else still).append(run)
        self.running = still
        for run in finished:
            self._finish(run)

    def _share(self, run: _Running) -> None:
        """After prefill the prompt's whole pages join the cache (as the engine's ``KVManager.share``
        does), so requests admitted later reuse them while this one is still decoding. The
        request's lock moves to the inserted node; pages the tree already held are given back."""
        cache, ps = self.cache, self.cfg.page_size
        r = self.reqs[run.idx]
        n_prompt = r.prompt_len // ps
        pages = run.prefix_pages + run.own_pages
        res = cache.insert(r.tokens(self.vocab)[:n_prompt * ps], pages[:n_prompt], self._tag(r))
        cache.lock(res.node)
        cache.unlock(run.node)
        run.node = res.node
        kept = len(res.pages)
        cache.device_pool.free(res.redundant(pages[:kept]))
        run.prefix_pages = list(res.pages)
        run.own_pages = pages[kept:]

    def _finish(self, run: _Running) -> None:
        cache = self.cache
        i = run.idx
        r = self.reqs[i]
        cache.device_pool.free(run.own_pages)
        cache.unlock(run.node)
        self.done += 1
        self.stats.finished(i, self.now - self.send_time[i])
        wf = r.workflow_id
        self.workflows.on_request_finished(wf, r.agent_id)
        if run.node.parent is not None:
            self.planner.note_insert(wf, r.agent_id, run.node)
        self.wf_left[wf] -= 1
        if self.wf_left[wf] == 0:
            self.workflows.finish(wf)
            self.guard.replanned(wf, ())
        for c in self.children[i]:
            self.deps_left[c] -= 1
            if self.deps_left[c] == 0:
                heapq.heappush(self.ready, (self.now + self.reqs[c].delay_s, c))
        if self.prefetch_on and self.wf_left[wf] > 0:
            self._prefetch(wf)

    # ------------------------------------------------------------------ prefetch
    def _prefetch(self, wf: str) -> None:
        """Background-load the host-only KV of agents due soon (the engine's planner), sharing the
        host->device link in order; each load may only evict nodes ranked below its target. A landed
        prefetch stays protected until its request is admitted or its agent is no longer due
        (``PrefetchGuard``); one that would not fit beside the pages running and queued requests
        need (``busy``: they are admitted first), beside what the prompts of the workflow's other
        agents due no later will take (``PrefetchGuard.pending_pages``; not those running, queued or
        protected), or the guard's budget is not issued."""
        cache, guard = self.cache, self.guard
        guard.replanned(wf, {d.agent_id: d.steps for d in self.planner.due_agents(wf)})
        busy = None
        active: set[tuple[str, str]] = set()
        due = self.planner.due_targets(wf)
        for target in self.planner.targets(wf, due=due):
            if guard.budget_pages:
                if busy is None:
                    busy = (sum(len(r.prefix_pages) + len(r.own_pages) for r in self.running)
                            + sum(self._pages_needed(i) for i in self.waiting))
                    reqs = [self.reqs[r.idx] for r in self.running] + [self.reqs[i] for i in self.waiting]
                    active = {(r.workflow_id, r.agent_id) for r in reqs}
                pending = guard.pending_pages(wf, target.agent_id, target.steps, target.node, due, active)
                if not guard.room(host_only_pages(target.node), busy, target.steps, target.prob, target.agent_id,
                                  wf, active, pending):
                    continue
            plan = cache.begin_load(target.node, limit=cache.policy.prefetch_limit(target.node))
            if plan is None:
                continue
            load_id = next(self._load_ids)  # never id(): a freed ticket's address is reused
            if guard.budget_pages:
                guard.protect(load_id, wf, target.agent_id, target.node, len(plan.device_pages), target.steps)
            start = max(self.now, self.link_free)
            self.link_free = plan.ticket.ready_at = start + self.cost.load_time(plan.tokens)
            heapq.heappush(self.loads, (self.link_free, load_id, plan.ticket, plan.nodes))
            self.prefetched.update(plan.device_pages)
            self.stats.prefetched_tokens += plan.tokens

    def _on_device_free(self, pages: list[int]) -> None:
        """Prefetched pages freed before any request used them were wasted.

        Accounting is per page, not per node: a request that uses the upper part of a prefetched
        node splits it, and only the pages it used count as prefetch hits."""
        if self.prefetched:
            gone = self.prefetched.intersection(pages)
            if gone:
                self.prefetched -= gone
                self.stats.prefetch_wasted_tokens += len(gone) * self.cfg.page_size


def simulate(trace: Trace, config: SimConfig, cost: CostModel | None = None) -> SimResult:
    return Simulator(trace, config, cost).run()
