"""The fair baseline: with the host tier every policy gets the loader (lru included), whose
on-demand loads go through the same batched copier as every policy's prefetches; lru never plans,
and no memory-pressure mode turns planning on. The copy timings (``prefetch.meter``) feed the
load-back and decode-overlap metrics. Real engines (tiny-llama on the CPU) and real threads."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import torch
from context_forge.engine.engine import Engine
from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.engine.request import GenerateRequest, SamplingParams
from context_forge.prefetch import CpuCopier, PrefetchStats, TaskKind
from context_forge.prefetch.meter import TransferMeter
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from engine_support import PS, prompt

_ids = itertools.count()
ENGINE_CONFIG = {"max_total_tokens": PS * 48, "enable_hierarchical_cache": True, "hicache_ratio": 4.0,
                 "load_ahead_step": 1}


def generate(engine: Engine, tokens: list[int], **kw: object) -> list:
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    async def main() -> list:
        return [o async for o in engine.generate(GenerateRequest(f"b{next(_ids)}", tokens, params, **kw))]
    return asyncio.run(main())


def test_every_policy_with_the_host_tier_gets_the_same_loader_and_only_lru_never_plans(make_engine: Any) -> None:
    engines = {p: make_engine(radix_eviction_policy=p) for p in ("lru", "kvflow")}
    try:
        lru, kvflow = engines["lru"].prefetch, engines["kvflow"].prefetch
        assert lru is not None and kvflow is not None, "lru gets the loader too"
        assert type(lru.controller.copier) is type(kvflow.controller.copier)
        assert lru.controller.copier.meter is not None and kvflow.controller.copier.meter is not None
        assert not lru.plans and kvflow.plans
        assert lru.controller.protection is None and kvflow.controller.protection is not None
        assert kvflow.protection.guard.budget_pages == int(0.25 * 48)
        assert lru.controller.alive, "the worker thread runs the on-demand loads"
        assert engines["lru"].parts.kv.loader is lru
    finally:
        for e in engines.values():
            e.shutdown()


def test_lru_never_plans_even_when_pressure_relaxes_and_workflows_change(make_engine: Any) -> None:
    engine = make_engine(radix_eviction_policy="lru")
    try:
        pf, parts = engine.prefetch, engine.parts
        assert pf is not None
        graph = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",))], repeat=True)
        engine.workflows.register("wf", graph)
        plan, code = prompt(10, 40), prompt(11, 40)
        generate(engine, plan, workflow_id="wf", agent_id="planner")
        generate(engine, code, workflow_id="wf", agent_id="coder")
        with parts.lock:
            parts.cache.evict_device(parts.device_pool.num_used)
            pf.set_pressure(8, 0)  # RELAXED would widen the look-ahead: must not enable planning
            pf.mark_all(["wf"])
            pf.tick()
            assert pf.controller.queued() == []
        generate(engine, plan + prompt(12, 8), workflow_id="wf", agent_id="planner")  # coder is due now
        assert pf.wait_idle()
        assert pf.stats.issued == 0 and pf.stats.completed == 0
        assert all(t.kind is TaskKind.DEMAND for t in pf.controller.history)
        with parts.lock:
            assert parts.cache.match(code, touch=False).device_len == 0, "nothing prefetched for lru"
        engine.check_invariants()
    finally:
        engine.shutdown()


def test_lru_demand_loads_go_through_the_loader_and_move_the_load_back_metrics(make_engine: Any) -> None:
    engine = make_engine(radix_eviction_policy="lru")
    try:
        pf, parts, m = engine.prefetch, engine.parts, engine.metrics
        assert pf is not None
        prefix = prompt(20, 40)
        generate(engine, prefix)
        with parts.lock:
            parts.cache.evict_device(parts.device_pool.num_used)
        outs = generate(engine, prefix + prompt(21, 7))
        assert outs[-1].cached_tokens == 40, "the host prefix was loaded back, not recomputed"
        assert pf.wait_idle()
        generate(engine, prompt(22, 5))  # one more step exports the stats
        page_bytes = parts.host_kv.bytes_per_page  # type: ignore[union-attr]
        assert pf.stats.demand_loads == 1 and pf.stats.demand_pages == 10
        assert m.demand_loads.value() == 1
        assert m.load_back_bytes.value() == 10 * page_bytes, "every unit of the load is timed"
        assert m.load_back_seconds.value() > 0
        assert m.load_stall_seconds.value() > 0, "the request waited in the queue for its load"
        assert m.load_backs.value() == 1 and engine.stats.counters.host_hit_tokens == 40
        assert m.prefetch_issued.value() == 0 and m.prefetch_protected_pages.value() == 0
        body = m.render()
        for name in ("demand_loads_total", "load_back_bytes_total", "load_back_seconds_total",
                     "load_stall_seconds_total", "prefetch_copy_seconds_total",
                     "prefetch_decode_copy_bytes_total", "prefetch_decode_copy_seconds_total",
                     "prefetch_released_unused_total", "prefetch_over_budget_total", "prefetch_protected_pages"):
            assert f"context_forge_{name} " in body, name
        engine.check_invariants()
    finally:
        engine.shutdown()


def test_enable_prefetch_false_keeps_the_loader_without_planning(make_engine: Any) -> None:
    engine = make_engine(radix_eviction_policy="kvflow", enable_prefetch=False)
    try:
        pf = engine.prefetch
        assert pf is not None and not pf.plans
        prefix = prompt(30, 24)
        generate(engine, prefix)
        with engine.parts.lock:
            engine.parts.cache.evict_device(engine.parts.device_pool.num_used)
        assert generate(engine, prefix + prompt(31, 3))[-1].cached_tokens == 24
        assert pf.stats.demand_loads == 1 and pf.stats.issued == 0
    finally:
        engine.shutdown()


# ---------------------------------------------------------------- the meter, with real threads
def _copier() -> CpuCopier:
    dev = DeviceKVBuffer(2, 16, PS, 1, 4, torch.float32)
    host = HostKVBuffer(2, 16, PS, 1, 4, torch.float32, pin_memory=False)
    host.buffer.normal_()
    return CpuCopier(dev, host, 2)


def test_the_meter_times_units_and_splits_out_the_copies_that_overlap_decode() -> None:
    stats = PrefetchStats()
    copier = _copier()
    meter = copier.meter = TransferMeter(stats)
    copier.load([0, 1, 2, 3], [4, 5, 6, 7], kind="demand")
    meter.poll()
    assert stats.demand_bytes == 4 * copier.bytes_per_page and stats.demand_seconds > 0
    assert stats.copy_seconds == 0 and stats.decode_seconds == 0
    assert torch.equal(copier.device_kv.buffer[:, :, 4:8], copier.host_kv.buffer[0:4].permute(1, 2, 0, 3, 4, 5))

    started, stop = threading.Event(), threading.Event()

    def decode() -> None:  # the engine thread: one long decode step
        meter.decode_begin()
        started.set()
        stop.wait(10)
        time.sleep(0.01)
        meter.decode_end()

    t = threading.Thread(target=decode)
    t.start()
    assert started.wait(10)
    copier.load([8, 9], [10, 11])  # a prefetch while the decode step runs
    meter.poll()
    assert stats.copy_seconds == 0, "not counted while the decode it overlaps is still open"
    stop.set()
    t.join(10)
    meter.poll()
    assert stats.copy_seconds > 0
    assert 0 < stats.decode_seconds <= stats.copy_seconds + 1e-9
    assert abs(stats.decode_bytes - 2 * copier.bytes_per_page) < 1e-6, "the whole copy ran during decode"
    before = (stats.copy_seconds, stats.decode_bytes)
    copier.load([12], [13])  # after the decode: timed, no decode share
    meter.poll()
    assert stats.copy_seconds > before[0] and stats.decode_bytes == before[1]
