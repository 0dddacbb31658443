"""Prefetch budget and protection in the engine's stack (scheduler + KV manager + prefetcher with its
real worker thread and the CPU copier; the model replaced by appending tokens).

A landed prefetch is protected (its node locked) until its agent's request is admitted, a replan no
longer lists the agent as due, or its workflow finishes; one that does not fit beside the busy pages
and the budget is skipped; an allocation short of room releases the oldest protection and retries.
Every test ends with the page invariants (free + cached + in use == capacity) checked.
"""

from __future__ import annotations

import threading

import pytest
import torch
from context_forge.cache import PagePool, RadixCache, get_policy
from context_forge.cache.node import RadixNode
from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.engine.kv_manager import KVManager
from context_forge.kv.buffer_transfer import BufferTransfer
from context_forge.engine.req_state import ReqState
from context_forge.engine.scheduler import Scheduler
from context_forge.engine.workflows import SharedWorkflows
from context_forge.prefetch import (
    ControllerConfig,
    ObservedPagePool,
    PlannerConfig,
    TaskState,
)
from context_forge.prefetch.service import WorkflowPrefetcher
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from stack_support import GatedCopier, PretendModelLoop, prompt, request_state

PS = 4
PAGES = 32
GRAPH = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",)), AgentSpec("tester", ("coder",))])


def state(tokens: list[int], workflow_id: str | None = None, agent_id: str | None = None) -> ReqState:
    return request_state(tokens, 2, workflow_id, agent_id)


class Stack(PretendModelLoop):
    """Real buffers, cache, workflows, scheduler and prefetcher (``budget`` pages of protection)."""

    def __init__(self, budget: int, look_ahead: int = 1) -> None:
        self.lock = threading.RLock()
        dev = DeviceKVBuffer(2, PAGES, PS, 1, 4, torch.float32)
        host = HostKVBuffer(2, 4 * PAGES, PS, 1, 4, torch.float32, pin_memory=False)
        self.pool = ObservedPagePool(PAGES, "device")
        self.cache = RadixCache(PS, self.pool, PagePool(4 * PAGES, "host"), get_policy("lru"),
                                BufferTransfer(dev, host), "write_through")
        self.workflows = SharedWorkflows(self.lock)
        self.copier = GatedCopier(dev, host, 2, open_gate=True)
        self.pf = WorkflowPrefetcher(self.cache, self.workflows, self.copier, self.lock,
                                     PlannerConfig(look_ahead), ControllerConfig(), budget_pages=budget)
        self.workflows.add_listener(self.pf.mark)
        self.kv = KVManager(PS, self.pool, self.cache, loader=self.pf,
                            on_insert=lambda st, node: self.pf.note_insert(st.req.workflow_id,
                                                                           st.req.agent_id, node))
        self.sched = Scheduler(self.kv, 64, 8)
        self.pf.protection.backlog = self.sched
        self.guard = self.pf.protection.guard
        self.pf.start()

    def tick(self) -> None:
        with self.lock:
            self.pf.tick()
        assert self.pf.wait_idle()

    def offload_all(self) -> None:
        with self.lock:
            self.cache.evict_device(self.pool.num_used)

    def seed(self, agents: dict[str, list[int]]) -> dict[str, RadixNode]:
        """Run one request per agent in workflow ``w`` (their KV is cached), send everything to the
        host, and register instance ``w2``: its due agents' KV is prefetched and protected."""
        self.workflows.register("w", GRAPH)
        self.run(*[state(tokens, "w", agent) for agent, tokens in agents.items()])
        nodes = {a: self.cache.match(t, touch=False).last_node for a, t in agents.items()}
        self.offload_all()
        with self.lock:
            assert all(n.device_pages is None for n in nodes.values())
            self.workflows.register("w2", GRAPH)
        self.tick()
        return nodes

    def check(self) -> None:
        with self.lock:
            self.kv.check()
            cached = sum(len(n.device_pages) for n in self.cache.nodes() if n.device_pages is not None)
            assert self.pool.num_free + cached + self.kv.in_use == PAGES
            assert self.guard.pages <= cached, "protected pages are cached device pages"

    def close(self) -> None:
        self.copier.gate.set()
        self.pf.stop()
        with self.lock:
            assert len(self.guard) == 0, "stop releases every protection"
            assert all(n.lock_ref == 0 for n in self.cache.nodes())
        self.check()


@pytest.fixture
def stack_factory():  # type: ignore[no-untyped-def]
    made: list[Stack] = []

    def make(budget: int = 8, look_ahead: int = 1) -> Stack:
        s = Stack(budget, look_ahead)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


CODER = prompt(1, 13)  # 3 whole pages cached
TESTER = prompt(2, 13)


def test_a_landed_prefetch_survives_eviction_pressure_until_its_request_claims_it(stack_factory) -> None:
    s = stack_factory()
    nodes = s.seed({"coder": CODER})
    assert s.pf.stats.completed == 1 and len(s.guard) == 1 and s.guard.pages == 3
    s.offload_all()  # the pressure controller's eviction, or another admission's
    with s.lock:
        assert nodes["coder"].device_pages is not None, "a protected prefetch is not evicted"
    s.check()
    follow = state(CODER + prompt(3, 6), "w2", "coder")
    s.run(follow)
    assert len(s.guard) == 0 and s.guard.pages == 0, "admission claims the agent's protection"
    assert s.pf.stats.hits == 1 and s.pf.stats.released_unused == 0 and s.pf.stats.wasted == 0
    s.check()


def test_a_replan_that_drops_the_agent_releases_its_protection(stack_factory) -> None:
    s = stack_factory()
    nodes = s.seed({"coder": CODER})
    assert len(s.guard) == 1
    with s.lock:
        s.workflows.agent_finished("w2", "planner")
    s.tick()
    assert len(s.guard) == 1, "coder is still due (0 steps)"
    with s.lock:
        s.workflows.agent_finished("w2", "coder")  # the plan moved on without coder's request
    s.tick()
    assert len(s.guard) == 0 and s.pf.stats.released_unused == 1
    s.offload_all()
    with s.lock:
        assert nodes["coder"].device_pages is None, "released: evictable again"
    assert s.pf.stats.wasted == 1
    s.check()


def test_a_finished_workflow_releases_its_protections(stack_factory) -> None:
    s = stack_factory()
    s.seed({"coder": CODER})
    with s.lock:
        s.workflows.finish("w2")
    s.tick()
    assert len(s.guard) == 0 and s.pf.stats.released_unused == 1
    s.check()


def test_a_waiting_request_keeps_its_agents_protection(stack_factory) -> None:
    s = stack_factory()
    s.seed({"coder": CODER})
    waiting = state(CODER + prompt(4, 5), "w2", "coder")
    with s.lock:
        s.sched.add(waiting)
        s.workflows.agent_finished("w2", "coder")  # no longer due, but its request is queued
    s.tick()
    assert len(s.guard) == 1 and s.pf.stats.released_unused == 0
    other = state(prompt(6, 5))
    with s.lock:
        s.sched.running.append(other)  # a running request will give pages back: keep waiting for it
        assert not s.pf.release_for_alloc(), "while requests run, a failed allocation spares a queued agent's KV"
        s.sched.running.remove(other)
        assert s.pf.release_for_alloc(), "with none running, nothing else would free pages: it goes"
    assert len(s.guard) == 0
    s.run()
    assert s.pf.stats.hits == 1, "released, not evicted: the request still finds it"
    s.check()


def test_a_prefetch_that_does_not_fit_beside_busy_pages_is_skipped(stack_factory) -> None:
    s = stack_factory()
    s.workflows.register("w", GRAPH)
    s.run(state(CODER, "w", "coder"))
    s.offload_all()
    big = state(prompt(5, 30 * PS))  # queued, never stepped: 30 busy pages of 32
    with s.lock:
        s.sched.add(big)
        s.workflows.register("w2", GRAPH)
    s.tick()
    st = s.pf.stats
    assert (st.over_budget, st.skipped, st.issued, len(s.guard)) == (1, 1, 0, 0)
    assert s.pf.controller.history[-1].reason == "over budget"
    with s.lock:
        s.sched.remove(big.rid)
    s.check()


def test_protections_stay_within_the_budget(stack_factory) -> None:
    s = stack_factory(budget=4, look_ahead=2)  # coder (1 step) and tester (2) due; 3 pages each
    s.seed({"coder": CODER, "tester": TESTER})
    st = s.pf.stats
    assert st.issued == 1 and st.over_budget == 1, "the second prefetch would pass the budget"
    assert len(s.guard) == 1 and s.guard.pages == 3
    assert s.guard.holds("w2", "coder"), "the most urgent agent went first"
    s.check()


def test_an_allocation_short_of_room_releases_the_oldest_protection_and_retries(stack_factory) -> None:
    s = stack_factory()
    nodes = s.seed({"coder": CODER})
    assert s.guard.pages == 3
    big = state(prompt(6, 31 * PS - 3))  # 31 of 32 pages: fits only without the protection
    s.run(big)
    assert big.num_output == 2, "admitted and finished"
    assert len(s.guard) == 0 and s.pf.stats.released_unused == 1
    with s.lock:
        assert nodes["coder"].device_pages is None
    s.check()


def test_a_plan_change_cancels_queued_prefetches(stack_factory) -> None:
    s = stack_factory(budget=16, look_ahead=2)
    s.workflows.register("w", GRAPH)
    s.run(state(CODER, "w", "coder"), state(TESTER, "w", "tester"))
    s.offload_all()
    s.copier.gate.clear()
    s.copier.waiting.clear()
    with s.lock:
        s.workflows.register("w2", GRAPH)
        s.pf.tick()
    assert s.copier.waiting.wait(10), "the first prefetch never started"
    queued = s.pf.controller.queued()
    assert [t.agent_id for t in queued] == ["tester"] and len(s.guard) == 1
    with s.lock:
        s.workflows.finish("w2")
        s.pf.tick()
    assert queued[0].state is TaskState.CANCELLED and queued[0].reason == "no longer due"
    assert len(s.guard) == 0, "the running prefetch's protection went with its workflow"
    s.copier.gate.set()
    assert s.pf.wait_idle()
    assert s.pf.stats.completed == 1 and s.pf.stats.cancelled == 1
    s.check()


def test_the_engine_counts_requests_of_agents_due_no_later_unless_they_run_or_wait(stack_factory) -> None:
    """``Protection.allows`` passes the task's workflow and the scheduler's running and queued
    agents to the guard: the pending requests of other agents due no later must fit in the pool
    beside the prefetch, and an agent whose request is queued counts in busy pages instead."""
    from context_forge.prefetch.tasks import LoadTask, TaskKind

    s = stack_factory(budget=PAGES)
    nodes = s.seed({"coder": CODER})
    with s.lock:
        s.guard.release_all()
        s.guard.note_request("tester", PAGES - 2)  # a request that leaves no room for a prefetch
        s.guard.replanned("w2", {"coder": 0.0, "tester": 0.0})
        task = LoadTask(TaskKind.PREFETCH, nodes["coder"], workflow_id="w2", agent_id="coder")
        assert not s.pf.protection.allows(task, 3), "the tester's request, due as soon, would not fit"
        queued = state(TESTER, "w2", "tester")
        s.sched.add(queued)
        assert s.sched.active_agents() == {("w2", "tester")}
        assert s.pf.protection.allows(task, 3), "a queued request counts by its prompt in busy pages"
        s.sched.remove(queued.rid)
    s.check()


def test_the_engine_counts_what_the_prompts_of_agents_due_no_later_will_take(stack_factory) -> None:
    """The controller keeps each workflow's due agents with their target nodes (``due_of``) and
    passes them to ``Protection.allows``: what their prompts will take (``due_footprint``: the
    host-only pages, and the device pages that nothing locks) must fit in the pool beside the
    prefetch and its request, so a prefetch whose sibling would not fit beside it is not reserved,
    whether the sibling's KV is on the host or cached on the device."""
    from context_forge.prefetch.planner import host_only_pages

    pair = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",)),
                          AgentSpec("tester", ("planner",))])
    big_tester = prompt(2, 8 * PS + 1)  # 8 whole pages
    s = stack_factory(budget=PAGES)
    s.workflows.register("w", pair)
    s.run(state(CODER, "w", "coder"), state(big_tester, "w", "tester"))
    with s.lock:
        s.workflows.finish("w")
    s.offload_all()
    s.copier.gate.clear()
    s.copier.waiting.clear()
    with s.lock:
        s.workflows.register("w2", pair)
        s.workflows.on_request("w2", "planner")
        s.workflows.on_request_finished("w2", "planner")
        s.pf.tick()
    assert s.copier.waiting.wait(10), "the first prefetch never started"
    running = s.pf.controller.running
    (queued,) = s.pf.controller.queued()
    assert running is not None and {running.agent_id, queued.agent_id} == {"coder", "tester"}

    def check_sibling_counts() -> None:
        due = s.pf.controller.due_of("w2")
        assert {(d.agent_id, d.steps) for d in due} == {("coder", 0.0), ("tester", 0.0)}
        s.guard.release_all()
        s.guard.note_request(running.agent_id, int(0.9 * PAGES) - 3 - 1)  # the prefetch and its request
        s.guard.note_request(queued.agent_id, 1)  # its request's own pages
        assert s.pf.protection.allows(running, 3), "without the sibling's KV it fits"
        assert not s.pf.protection.allows(running, 3, due), "with the sibling's KV it would not"

    with s.lock:
        assert host_only_pages(queued.node) == (8 if queued.agent_id == "tester" else 3)
        check_sibling_counts()
        s.guard.note_request(running.agent_id, 0)
        s.guard.note_request(queued.agent_id, 0)
    s.copier.gate.set()
    assert s.pf.wait_idle()
    with s.lock:
        assert queued.state is TaskState.DONE, "with small requests both fit"
        assert queued.node.device_pages is not None and host_only_pages(queued.node) == 0
        check_sibling_counts()  # cached on the device, unlocked: its request will pin it
    s.check()
