"""End-to-end engine tests on the CPU with the ``tiny-llama`` preset (random weights, byte tokenizer).

Every engine here is real: model, paged KV buffers, radix cache, scheduler and step-loop thread.
Greedy outputs of a cache-off engine run one request at a time are the reference.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from context_forge.engine.engine import Engine
from context_forge.engine.request import GenerateOutput, GenerateRequest, SamplingParams
from engine_support import PS, prompt, settle

_ids = itertools.count()


def greedy(max_tokens: int = 12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)


async def collect(engine: Engine, tokens: list[int], params: SamplingParams, **kw) -> list[GenerateOutput]:
    req = GenerateRequest(f"r{next(_ids)}", tokens, params, **kw)
    return [out async for out in engine.generate(req)]


def run(engine: Engine, tokens: list[int], params: SamplingParams | None = None, **kw) -> list[GenerateOutput]:
    return asyncio.run(collect(engine, tokens, params or greedy(), **kw))


def token_ids(outs: list[GenerateOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def run_many(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[list[GenerateOutput]]:
    async def main():
        return await asyncio.gather(*(collect(engine, p, s) for p, s in jobs))
    return asyncio.run(main())


@pytest.fixture(scope="module")
def ref(module_engines):
    engine = module_engines(disable_radix_cache=True)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def eng(module_engines):
    engine = module_engines()
    yield engine
    settle(engine)
    engine.shutdown()


def test_output_fields_and_streaming(eng, ref):
    p = prompt(1, 30)
    outs = run(eng, p, greedy(10))
    assert len(outs) == 10 and all(len(o.token_ids) == 1 for o in outs)
    last = outs[-1]
    assert [o.finish_reason for o in outs] == [None] * 9 + ["length"]
    assert (last.prompt_tokens, last.completion_tokens) == (30, 10)
    assert "".join(o.text for o in outs) == eng.tokenizer.decode(token_ids(outs))
    assert token_ids(outs) == token_ids(run(ref, p, greedy(10)))
    settle(eng)


def test_device_prefix_hit_matches_cache_off(eng, ref):
    base = prompt(2, 41)
    first = run(eng, base)
    again = run(eng, base)
    longer = run(eng, base + prompt(3, 9))
    assert again[-1].cached_tokens == 40  # whole pages of the first 40 tokens
    assert longer[-1].cached_tokens >= 40
    assert token_ids(first) == token_ids(again) == token_ids(run(ref, base))
    assert token_ids(longer) == token_ids(run(ref, base + prompt(3, 9)))
    assert eng.stats.counters.device_hit_tokens >= 80
    settle(eng)


def test_continuous_batching_equals_sequential(eng, ref):
    shared = prompt(4, 20)
    jobs = [((shared if i % 2 else []) + prompt(10 + i, 5 + 3 * i), greedy(4 + i)) for i in range(10)]
    together = run_many(eng, jobs)
    for (p, s), outs in zip(jobs, together):
        assert token_ids(outs) == token_ids(run(ref, p, s))
        assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == s.max_tokens
    settle(eng)


def test_chunked_prefill_gives_same_outputs(make_engine, ref):
    engine = make_engine(chunked_prefill_size=PS * 2, max_prefill_tokens=PS * 2)
    try:
        jobs = [(prompt(20 + i, 37 + i), greedy(6)) for i in range(4)]
        for (p, s), outs in zip(jobs, run_many(engine, jobs)):
            assert token_ids(outs) == token_ids(run(ref, p, s))
        assert engine.stats.counters.steps > 37 // (PS * 2)
        settle(engine)
    finally:
        engine.shutdown()


def test_preemption_when_decode_runs_out_of_pages(make_engine, ref):
    engine = make_engine(max_total_tokens=PS * 24)
    try:
        jobs = [(prompt(30 + i, 10), greedy(30)) for i in range(6)]
        results = run_many(engine, jobs)
        assert engine.stats.counters.preemptions > 0
        for (p, s), outs in zip(jobs, results):
            assert token_ids(outs) == token_ids(run(ref, p, s))
        settle(engine)
    finally:
        engine.shutdown()


def test_host_hit_after_device_eviction_matches_cache_off(make_engine, ref):
    engine = make_engine(max_total_tokens=PS * 16, enable_hierarchical_cache=True, hicache_ratio=4.0,
                         hicache_write_policy="write_back")
    try:
        a, b = prompt(40, 40), prompt(41, 40)
        out_a = run(engine, a, greedy(6))
        run(engine, b, greedy(6))  # needs most of the pool: a's pages go to host
        assert engine.parts.cache.stats.written_back_pages > 0
        again = run(engine, a, greedy(6))
        assert engine.stats.counters.host_hit_tokens > 0
        assert again[-1].cached_tokens > 0
        assert token_ids(again) == token_ids(out_a) == token_ids(run(ref, a, greedy(6)))
        assert "context_forge_host_hit_tokens_total" in engine.metrics.render()
        settle(engine)
    finally:
        engine.shutdown()
