"""Prefetching inside the engine, on the CPU through the thread path (no GPU here).

Admission: a request whose prefix is on the host waits for its on-demand load while other
requests run (scheduler + KV manager + prefetcher, the model replaced by appending tokens as in
``test_engine_scheduler``). Service: workflow events and tracker changes trigger replanning.
End to end: a real engine (tiny-llama) with a declared workflow finds the next agent's
offloaded prefix back on the device when its request arrives: a prefetch hit and no stall.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
import torch
from context_forge.cache import PagePool, RadixCache, get_policy
from context_forge.engine.engine import Engine
from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.engine.kv_manager import KVManager
from context_forge.kv.buffer_transfer import BufferTransfer
from context_forge.engine.req_state import ReqState
from context_forge.engine.request import GenerateRequest, SamplingParams
from context_forge.engine.scheduler import Scheduler
from context_forge.engine.workflows import SharedWorkflows
from context_forge.prefetch import (
    ControllerConfig,
    CpuCopier,
    ObservedPagePool,
    PlannerConfig,
    TaskState,
    WorkflowPrefetcher,
)
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.scope import scope_key
from stack_support import GatedCopier, PretendModelLoop, prompt, request_state

PS = 4
_ids = itertools.count()
# 64 pages: a round's running planner (13 pages) beside the coder's prefetch (10) stays within the
# guard's DEEP_HEADROOM share, whichever side of the planner's finish the prefetch is planned on.
ENGINE_CONFIG = {"max_total_tokens": PS * 64, "radix_eviction_policy": "kvflow", "enable_hierarchical_cache": True,
                 "hicache_ratio": 4.0, "load_ahead_step": 1}


def state(prompt: list[int], max_tokens: int = 2, workflow_id=None, agent_id=None) -> ReqState:
    return request_state(prompt, max_tokens, workflow_id, agent_id)


class Stack(PretendModelLoop):
    """Scheduler, KV manager and prefetcher over real buffers, cache and workflows."""

    def __init__(self, copier_cls=GatedCopier, layer_wait: bool = False) -> None:
        self.lock = threading.RLock()
        dev = DeviceKVBuffer(2, 32, PS, 1, 4, torch.float32)
        host = HostKVBuffer(2, 64, PS, 1, 4, torch.float32, pin_memory=False)
        self.pool = ObservedPagePool(32, "device")
        self.cache = RadixCache(PS, self.pool, PagePool(64, "host"), get_policy("lru"),
                                BufferTransfer(dev, host), "write_back")
        self.workflows = SharedWorkflows(self.lock)
        self.copier = copier_cls(dev, host, 2)
        self.pf = WorkflowPrefetcher(self.cache, self.workflows, self.copier, self.lock, PlannerConfig(1),
                                     ControllerConfig(layer_gates=layer_wait))
        self.workflows.add_listener(self.pf.mark)
        self.kv = KVManager(PS, self.pool, self.cache, loader=self.pf,
                            on_insert=lambda st, node: self.pf.note_insert(st.req.workflow_id,
                                                                           st.req.agent_id, node),
                            layer_wait=layer_wait)
        self.sched = Scheduler(self.kv, 64, 8)
        self.pf.start()

    def offloaded(self, tokens: list[int]) -> ReqState:
        """Run a request of ``tokens``, send its KV to the host, close the copier's gate (loads
        stay in flight) and queue the same prompt again; returns the queued request."""
        self.copier.gate.set()
        self.run(state(tokens))
        self.copier.gate.clear()
        again = state(tokens)
        with self.lock:
            self.cache.evict_device(self.pool.num_used)
            self.sched.add(again)
        return again

    def close(self) -> None:
        if isinstance(self.copier, GatedCopier):
            self.copier.gate.set()
        self.pf.stop()


def test_a_request_waits_for_its_on_demand_load_while_others_run():
    s = Stack()
    try:
        s.copier.gate.set()
        first = state(prompt(1, 21))
        s.run(first)
        s.copier.gate.clear()
        with s.lock:
            s.cache.evict_device(s.pool.num_used)
        again, other = state(prompt(1, 21)), state(prompt(2, 9))
        with s.lock:
            s.sched.add(again)
            s.sched.add(other)
        _, batch = s.step()
        assert [st for st, _ in batch.admitted] == [other], "the waiting request must not block the queue"
        assert list(s.sched.waiting) == [again] and s.kv.num_waiting_for_loads == 1
        _, batch = s.step()
        assert again in s.sched.waiting, "still loading: still waiting"
        s.copier.gate.set()
        assert s.pf.wait_idle()
        _, batch = s.step()
        (hit,) = [h for st, h in batch.admitted if st is again]
        assert (hit.device_hit, hit.host_hit) == (0, 20) and hit.stall_s > 0 and hit.prefetch_hit == 0
        s.run()
        assert s.pf.stats.demand_loads == 1 and s.kv.num_waiting_for_loads == 0
    finally:
        s.close()


def test_with_layer_waiting_a_request_is_admitted_while_its_load_lands():
    s = Stack(layer_wait=True)
    try:
        again = s.offloaded(prompt(1, 21))
        _, batch = s.step()
        ((st, hit),) = batch.admitted
        assert st is again and s.kv.gated_admissions == 1
        assert (hit.device_hit, hit.host_hit) == (0, 20), "the loading prefix is reused, not recomputed"
        assert len(again.kv_gates) == 1 and again.kv_gates[0].issued
        with s.lock:
            assert all(n.is_loading for n in s.cache.match(prompt(1, 21), touch=False).nodes)
        s.copier.gate.set()
        assert s.pf.wait_idle()
        s.run()
        with s.lock:
            assert all(n.lock_ref == 0 for n in s.cache.nodes())
            s.kv.check()
    finally:
        s.close()


def test_layer_waiting_needs_a_loader():
    with pytest.raises(ValueError, match="layer_wait needs a loader"):
        KVManager(PS, PagePool(4), None, layer_wait=True)


def test_aborting_a_waiting_request_releases_its_hold():
    s = Stack()
    try:
        waiting = s.offloaded(prompt(3, 17))
        s.step()
        with s.lock:
            assert s.sched.remove(waiting.rid) is waiting
        s.copier.gate.set()
        assert s.pf.wait_idle()
        with s.lock:
            assert all(n.lock_ref == 0 for n in s.cache.nodes())
            s.kv.check()
    finally:
        s.close()


def test_workflow_events_and_tracker_changes_trigger_prefetch():
    s = Stack(copier_cls=CpuCopier)
    try:
        graph = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",)),
                               AgentSpec("tester", ("coder",))])
        s.workflows.register("w", graph)
        s.run(state(prompt(4, 13), workflow_id="w", agent_id="coder"),
              state(prompt(5, 13), workflow_id="w", agent_id="tester"))
        coder = s.pf.planner.target_node("w", "coder")
        with s.lock:
            s.cache.evict_device(s.pool.num_used)
            s.workflows.register("w2", graph)  # a new instance: planner (0 steps) and coder (1) are due
            s.pf.tick()
        assert s.pf.wait_idle()
        assert s.pf.stats.completed == 1 and coder.device_pages is not None  # by the agent fallback
        with s.lock:
            s.workflows.tracker.agent_finished("w2", "planner")  # behind SharedWorkflows' back
            s.pf.tick()
        assert s.pf.wait_idle()
        assert s.pf.stats.completed == 2  # tester is now 1 step away
        with s.lock:
            s.cache.evict_device(s.pool.num_used)
            s.pf.set_pressure(-1)
            s.workflows.agent_finished("w2", "coder")
            s.pf.tick()
        assert s.pf.wait_idle() and s.pf.stats.completed == 2, "no prefetch under emergency pressure"
        with s.lock:
            s.pf.set_pressure(2)  # relaxed again: every live workflow is replanned
            s.workflows.finish("w2")
            s.pf.tick()
        assert s.pf.wait_idle()
        assert s.pf.stats.completed == 3 and coder.device_pages is not None  # w's coder is 1 step away
        assert all(t.state is not TaskState.QUEUED for t in s.pf.controller.history)
    finally:
        s.close()


# ---------------------------------------------------------------- the real engine
def generate(engine: Engine, tokens: list[int], **kw) -> list:
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    async def main():
        return [o async for o in engine.generate(GenerateRequest(f"e{next(_ids)}", tokens, params, **kw))]
    return asyncio.run(main())


def ids(outs) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def test_next_agents_offloaded_prefix_is_on_the_device_when_its_request_arrives(make_engine):
    # 128 pages, as in the layer-wait test below: whether the planner still runs when the coder is
    # planned is thread timing, and in 64 pages the coder's prefetch beside it would not be issued.
    engine = make_engine(max_total_tokens=PS * 128)
    ref = make_engine(disable_radix_cache=True, enable_hierarchical_cache=False)
    try:
        graph = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",))], repeat=True)
        engine.workflows.register("wf", graph)
        plan, code = prompt(10, 40), prompt(11, 40)
        generate(engine, plan, workflow_id="wf", agent_id="planner")
        generate(engine, code, workflow_id="wf", agent_id="coder")
        pf, lock, cache = engine.prefetch, engine.parts.lock, engine.parts.cache
        assert pf is not None and pf.wait_idle()
        with lock:
            cache.evict_device(engine.parts.device_pool.num_used)  # both agents' KV to host
            assert cache.match(code, touch=False).device_len == 0
        generate(engine, plan + prompt(12, 8), workflow_id="wf", agent_id="planner")  # round 2
        assert pf.wait_idle()
        with lock:
            m = cache.match(code, touch=False)
            assert m.device_len == 40 and not any(n.is_loading for n in m.nodes)
        c = engine.stats.counters
        before = (c.prefetch_hit_tokens, c.prefetch_stall_s, c.host_hit_tokens)
        follow_up = code + prompt(13, 8)
        outs = generate(engine, follow_up, workflow_id="wf", agent_id="coder")
        assert outs[-1].cached_tokens == 40
        held = -(-(48 + 4) // PS) - 40 // PS  # prompt and output pages beyond the cached 40 tokens
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                estimate = pf.protection.guard.own_estimate("coder")
            if estimate == held:
                break
            time.sleep(0.01)
        assert estimate == held, "the guard's estimate is the pages the finished request held beyond its cached prefix"
        assert c.prefetch_hit_tokens - before[0] == 40, "the coder's prefix came from a prefetch"
        assert (c.prefetch_stall_s, c.host_hit_tokens) == before[1:], "no stall, no on-demand load"
        assert ids(outs) == ids(generate(ref, follow_up))
        m = engine.metrics
        assert m.prefetch_hit_tokens.value() >= 40
        with lock:
            tags = cache.match(code, touch=False).last_node.agents
        assert scope_key("wf", "coder") in tags, "nodes are tagged with the workflow-scoped agent key"
        assert m.prefetch_completed.value() >= 1 and m.prefetch_issued.value() >= 1
        assert m.prefetch_bytes.value() >= 10 * engine.parts.host_kv.bytes_per_page
        engine.check_invariants()
    finally:
        engine.shutdown()
        ref.shutdown()


class HeldCopier(CpuCopier):
    """The real CPU copier, holding its units of layers >= ``hold_from`` until the test calls
    ``release`` (keeps a load half-landed while the engine runs)."""

    def __init__(self, *args, hold_from: int = 1) -> None:
        super().__init__(*args)
        self.hold_from = hold_from
        self.held = threading.Event()
        self.released = threading.Event()

    def _issue(self, state, unit, host_pages, device_pages) -> None:
        if unit.first_layer >= self.hold_from:
            self.held.set()
            assert self.released.wait(20), "never released"
        super()._issue(state, unit, host_pages, device_pages)

    def release(self) -> None:
        self.released.set()


def test_layer_wait_starts_a_request_before_its_prefix_has_landed(make_engine):
    engine = make_engine(prefetch_wait_mode="layer")
    ref = make_engine(disable_radix_cache=True, enable_hierarchical_cache=False)
    try:
        pf, parts = engine.prefetch, engine.parts
        assert pf is not None and parts.kv.layer_wait
        old = pf.controller.copier
        copier = HeldCopier(old.device_kv, old.host_kv, old.chunk_pages)
        pf.controller.copier = copier
        prefix = prompt(30, 40)
        copier.release()
        generate(engine, prefix)
        copier.released.clear()
        with parts.lock:
            parts.cache.evict_device(parts.device_pool.num_used)
        follow = prefix + prompt(31, 9)
        result: list = []
        worker = threading.Thread(target=lambda: result.append(generate(engine, follow)))
        worker.start()
        try:
            assert copier.held.wait(10), "the on-demand load never started"
            deadline = time.monotonic() + 10
            while parts.kv.gated_admissions == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            with parts.lock:
                loading = [n for n in parts.cache.match(follow, touch=False).nodes if n.is_loading]
            assert parts.kv.gated_admissions == 1, "admitted while its prefix was still landing"
            assert loading, "layer 1 of the load is still held"
            assert not result, "the forward pass must wait for layer 1"
        finally:
            copier.release()
            worker.join(20)
        (outs,) = result
        assert outs[-1].cached_tokens == 40
        assert engine.stats.counters.host_hit_tokens == 40
        assert ids(outs) == ids(generate(ref, follow))
        assert pf.wait_idle()
        engine.check_invariants()
    finally:
        engine.shutdown()
        ref.shutdown()


def test_layer_wait_with_a_prefetch_in_flight_gives_the_same_tokens(make_engine):
    # 128 pages: in 64 the coder's prefetch (due after the running planner) and the pages its
    # request allocates would not fit within guard.DEEP_HEADROOM, and it would not be issued.
    engine = make_engine(prefetch_wait_mode="layer", max_total_tokens=PS * 128)
    ref = make_engine(disable_radix_cache=True, enable_hierarchical_cache=False)
    try:
        graph = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",))], repeat=True)
        engine.workflows.register("wf", graph)
        plan, code = prompt(40, 40), prompt(41, 40)
        generate(engine, plan, workflow_id="wf", agent_id="planner")
        generate(engine, code, workflow_id="wf", agent_id="coder")
        pf, parts = engine.prefetch, engine.parts
        assert pf is not None and pf.wait_idle()
        with parts.lock:
            parts.cache.evict_device(parts.device_pool.num_used)
        generate(engine, plan + prompt(42, 8), workflow_id="wf", agent_id="planner")
        follow = code + prompt(43, 8)
        outs = generate(engine, follow, workflow_id="wf", agent_id="coder")
        assert outs[-1].cached_tokens == 40
        assert ids(outs) == ids(generate(ref, follow))
        assert pf.wait_idle() and pf.stats.completed >= 1
        engine.check_invariants()
    finally:
        engine.shutdown()
        ref.shutdown()


def test_prefetch_is_off_without_the_host_tier_or_when_disabled(make_engine):
    engine = make_engine(enable_hierarchical_cache=False)
    try:
        assert engine.prefetch is None, "no host tier: no loader at all"
        assert len(ids(generate(engine, prompt(21, 9)))) == 4
    finally:
        engine.shutdown()
    engine = make_engine(enable_prefetch=False)
    try:
        pf = engine.prefetch
        assert pf is not None and not pf.plans, "the loader stays (on-demand loads), planning is off"
        assert pf.controller.protection is None
        assert len(ids(generate(engine, prompt(21, 9)))) == 4
    finally:
        engine.shutdown()

