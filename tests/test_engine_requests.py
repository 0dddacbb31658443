"""Engine request handling on the CPU (``tiny-llama`` preset): sampling options, stops, aborts,
validation, workflow metadata and the KV round trip through the host tier."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import torch
from context_forge.engine.engine import Engine
from context_forge.engine.errors import InvalidRequest
from context_forge.engine.request import GenerateOutput, GenerateRequest, SamplingParams
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from engine_support import PS, settle

_ids = itertools.count()
ENGINE_CONFIG = {"max_total_tokens": 512, "max_prefill_tokens": 16384}


def prompt(seed: int, length: int) -> list[int]:
    return [(seed * 97 + i * 31) % 256 for i in range(length)]


def greedy(max_tokens: int = 12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


def request(tokens: list[int], params: SamplingParams | None = None, **kw) -> GenerateRequest:
    return GenerateRequest(f"q{next(_ids)}", tokens, params or greedy(), **kw)


def run(engine: Engine, tokens: list[int], params: SamplingParams | None = None, **kw) -> list[GenerateOutput]:
    async def main():
        return [out async for out in engine.generate(request(tokens, params, **kw))]
    return asyncio.run(main())


def ids(outs: list[GenerateOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def text(outs: list[GenerateOutput]) -> str:
    return "".join(o.text for o in outs)


@pytest.fixture(scope="module")
def eng(module_engines):
    engine = module_engines()
    yield engine
    settle(engine)
    engine.shutdown()


# ------------------------------------------------------------------ sampling and stopping
def test_max_tokens_and_top_k_one_equals_greedy(eng):
    p = prompt(1, 20)
    base = run(eng, p, greedy(9))
    assert len(ids(base)) == 9 and base[-1].finish_reason == "length"
    top1 = run(eng, p, SamplingParams(temperature=0.8, top_k=1, max_tokens=9, ignore_eos=True))
    assert ids(top1) == ids(base)
    settle(eng)


def test_seed_reproducible_alone_and_in_a_batch(eng):
    p = prompt(2, 15)
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, ignore_eos=True, seed=1234)
    alone = ids(run(eng, p, params))

    async def one(req: GenerateRequest) -> list[GenerateOutput]:
        return [o async for o in eng.generate(req)]

    async def batched():
        reqs = [request(p, params)] + [request(prompt(3 + i, 11), SamplingParams(max_tokens=8, seed=i))
                                       for i in range(4)]
        return await asyncio.gather(*(one(r) for r in reqs))

    together = asyncio.run(batched())
    assert ids(together[0]) == alone
    other = ids(run(eng, p, SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True, seed=99)))
    assert other != alone
    settle(eng)


def seeded(max_tokens: int, **kw) -> SamplingParams:
    """Sampling with a fixed seed: varied but reproducible text (greedy on random weights repeats)."""
    return SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True, seed=7, **kw)


def test_stop_string_cuts_text_before_it(eng):
    p = prompt(4, 12)
    reference = run(eng, p, seeded(24))
    full = text(reference)
    stop = next(full[i:i + 2] for i in range(4, len(full) - 1)
                if "\ufffd" not in full[i:i + 2] and full[i:i + 2] not in full[:i + 1])
    outs = run(eng, p, seeded(24, stop=[stop, "never-produced"]))
    assert outs[-1].finish_reason == "stop"
    assert text(outs) == full[:full.index(stop)]
    assert stop not in text(outs)
    settle(eng)


def test_stop_token_ids_end_generation_without_text(eng):
    p = prompt(5, 12)
    reference = ids(run(eng, p, seeded(20)))
    target = reference[5]
    cut = reference.index(target)
    outs = run(eng, p, seeded(20, stop_token_ids=[target]))
    assert outs[-1].finish_reason == "stop"
    assert ids(outs) == reference[:cut + 1]
    assert outs[-1].completion_tokens == cut + 1
    assert text(outs) == eng.tokenizer.decode(reference[:cut])
    settle(eng)


def test_eos_stops_unless_ignore_eos(eng):
    """Seeded runs with ``ignore_eos`` until one samples EOS; the same seed without it stops there."""
    eos = eng.tokenizer.eos_token_ids[0]
    p = prompt(6, 10)

    def params(seed: int, ignore: bool) -> SamplingParams:
        return SamplingParams(temperature=2.0, max_tokens=40, ignore_eos=ignore, seed=seed)

    async def search():
        async def one(seed: int) -> list[int]:
            return ids([o async for o in eng.generate(request(p, params(seed, True)))])
        for start in range(0, 256, 32):
            runs = await asyncio.gather(*(one(s) for s in range(start, start + 32)))
            for seed, produced in zip(range(start, start + 32), runs):
                if eos in produced:
                    return seed, produced
        raise AssertionError("no seed sampled EOS")

    seed, produced = asyncio.run(search())
    assert len(produced) == 40
    stopped = run(eng, p, params(seed, False))
    assert stopped[-1].finish_reason == "stop"
    assert ids(stopped) == produced[:produced.index(eos) + 1]
    assert text(stopped) == eng.tokenizer.decode(produced[:produced.index(eos)])
    settle(eng)


# ------------------------------------------------------------------ aborts and validation
def test_abort_running_request_frees_pages(eng):
    async def main():
        req = request(prompt(7, 30), greedy(400))
        outs = []
        async for out in eng.generate(req):
            outs.append(out)
            if len(outs) == 3:
                eng.abort(req.rid)
        return outs

    outs = asyncio.run(main())
    assert outs[-1].finish_reason == "abort" and len(outs) < 400
    settle(eng)


def test_closing_the_stream_aborts(eng):
    async def main():
        gen = eng.generate(request(prompt(8, 30), greedy(400)))
        first = await anext(gen)
        await gen.aclose()
        return first

    assert asyncio.run(main()).finish_reason is None
    settle(eng)


def test_abort_waiting_request(make_engine):
    engine = make_engine(max_running_requests=1)
    try:
        async def main():
            long_req = request(prompt(9, 20), greedy(200))
            waiting = request(prompt(10, 20), greedy(5))
            gen_long = engine.generate(long_req)
            await anext(gen_long)
            gen_wait = engine.generate(waiting)
            task = asyncio.ensure_future(anext(gen_wait))
            await asyncio.sleep(0.05)
            assert [s.rid for s in engine.scheduler.waiting] == [waiting.rid]
            engine.abort(waiting.rid)
            out = await task
            engine.abort(long_req.rid)
            rest = [o async for o in gen_long]
            return out, rest

        out, rest = asyncio.run(main())
        assert out.finish_reason == "abort" and out.token_ids == []
        assert rest[-1].finish_reason == "abort"
        settle(engine)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("tokens, params, param", [
    ([], greedy(), "prompt"),
    ([1, 2, 300], greedy(), "prompt"),
    ([1, -1], greedy(), "prompt"),
    ([1, 2], SamplingParams(temperature=-0.5), "temperature"),
    ([1, 2], SamplingParams(top_p=0.0), "top_p"),
    ([1, 2], SamplingParams(top_p=1.5), "top_p"),
    ([1, 2], SamplingParams(top_k=0), "top_k"),
    ([1, 2], SamplingParams(top_k=-2), "top_k"),
    ([1, 2], SamplingParams(max_tokens=0), "max_tokens"),
    ([1, 2], SamplingParams(stop=[""]), "stop"),
    ([1, 2], SamplingParams(seed=2**70), "seed"),
    ([1] * 100, SamplingParams(max_tokens=4000), "max_tokens"),
    ([1] * 4096, SamplingParams(max_tokens=1), "prompt"),
])
def test_invalid_requests_raise_before_allocating(eng, tokens, params, param):
    used = eng.parts.device_pool.num_used
    with pytest.raises(InvalidRequest) as info:
        eng.generate(request(tokens, params))
    assert info.value.param == param
    assert eng.parts.device_pool.num_used == used
    settle(eng)


def test_length_error_names_the_numbers(eng):
    with pytest.raises(InvalidRequest, match=r"prompt \(100 tokens\) \+ max_tokens \(4000\)"):
        eng.generate(request([1] * 100, SamplingParams(max_tokens=4000)))


def test_request_larger_than_the_pool_is_refused(make_engine):
    engine = make_engine(max_total_tokens=PS * 8)
    try:
        with pytest.raises(InvalidRequest, match="KV pages"):
            engine.generate(request(prompt(11, 20), greedy(20)))
        settle(engine)
    finally:
        engine.shutdown()


# ------------------------------------------------------------------ workflows
def test_workflow_metadata_is_checked_and_tracked(eng):
    graph = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",))])
    eng.workflows.register("wf-1", graph)
    with pytest.raises(InvalidRequest, match="unknown agent 'tester'"):
        eng.generate(request([1, 2, 3], workflow_id="wf-1", agent_id="tester"))
    with pytest.raises(InvalidRequest, match="agent_id is required"):
        eng.generate(request([1, 2, 3], workflow_id="wf-1"))
    with pytest.raises(InvalidRequest, match="workflow_id"):
        eng.generate(request([1, 2, 3], workflow_id=""))
    assert eng.workflows.tracker.steps("coder") == 1
    outs = run(eng, prompt(12, 9), greedy(3), workflow_id="wf-1", agent_id="planner")
    assert outs[-1].finish_reason == "length"
    assert eng.workflows.tracker.steps("coder") == 0
    run(eng, prompt(13, 9), greedy(3), workflow_id="dyn-1", agent_id="solo")
    assert eng.workflows.is_dynamic("dyn-1")
    eng.workflows.finish("wf-1")
    eng.workflows.finish("dyn-1")
    settle(eng)


# ------------------------------------------------------------------ host tier round trip
def test_device_host_device_round_trip_is_bit_exact(make_engine):
    engine = make_engine(max_total_tokens=PS * 32, enable_hierarchical_cache=True, hicache_ratio=2.0,
                         hicache_write_policy="write_back")
    try:
        p = prompt(14, 33)
        first = run(engine, p, greedy(4))
        settle(engine)
        cache, dev, host = engine.parts.cache, engine.parts.device_kv, engine.parts.host_kv
        with engine.parts.lock:
            m = cache.match(p, touch=False)
            assert m.device_len == 32
            before = dev.buffer[:, :, m.device_pages].clone()
            cache.evict_device(engine.parts.device_pool.num_used)
            m = cache.match(p, touch=False)
            assert m.device_len == 0 and m.host_len == 32
            host_pages = [hp for node in m.nodes for hp in node.host_pages]
            assert torch.equal(host.buffer[host_pages].permute(1, 2, 0, 3, 4, 5), before)
            assert cache.load_back(m.last_node) == 32
            m = cache.match(p, touch=False)
            assert torch.equal(dev.buffer[:, :, m.device_pages], before)
            cache.evict_device(engine.parts.device_pool.num_used)
        again = run(engine, p, greedy(4))
        assert again[-1].cached_tokens == 32 and ids(again) == ids(first)
        settle(engine)
    finally:
        engine.shutdown()


def test_metrics_expose_pool_pressure_and_hits(eng):
    p = prompt(15, 24)
    run(eng, p, greedy(2))
    run(eng, p, greedy(2))
    body = eng.metrics.render()
    assert 'context_forge_pool_capacity_pages{pool="device"} 128' in body
    assert "context_forge_pressure_mode 0" in body
    assert eng.metrics.device_hit_tokens.value() >= 20
    settle(eng)


def test_shutdown_aborts_unfinished_requests(make_engine):
    engine = make_engine()

    async def main():
        gen = engine.generate(request(prompt(16, 10), greedy(500)))
        await anext(gen)
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        return [o async for o in gen]

    rest = asyncio.run(main())
    assert rest[-1].finish_reason == "abort"
    engine.check_invariants()
    assert engine.kv.in_use == 0
