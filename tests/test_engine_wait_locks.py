"""Requests waiting for a host load lock their prefix; with a pool that holds two system prompts,
those locks must never stop the engine (a real engine: tiny-llama on the CPU, the real loop thread,
the prefetcher's real CPU copier for the on-demand loads).

The shape is the one that hung every policy end to end: the head of the queue has its prefix
loaded but no room for the rest of its prompt, while the request behind it holds the other half
of the pool locked for its own landed load."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from context_forge.engine.request import GenerateRequest, SamplingParams
from engine_support import prompt

PS = 4
POOL_PAGES = 64
ENGINE_CONFIG = {"max_total_tokens": PS * POOL_PAGES, "enable_hierarchical_cache": True, "hicache_ratio": 4.0,
                 "enable_prefetch": False, "chunked_prefill_size": 512, "max_prefill_tokens": 1024}
_ids = itertools.count()


def request(tokens: list[int], max_tokens: int = 4) -> GenerateRequest:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return GenerateRequest(f"w{next(_ids)}", tokens, params)


async def consume(engine, req: GenerateRequest) -> int:
    return sum([len(o.token_ids) async for o in engine.generate(req)])


def offloaded_system_prompts(engine) -> tuple[list[int], list[int]]:
    """Two 31-page prompts computed, then moved to the host tier (the device pool is empty)."""
    x, y = prompt(1, 31 * PS), prompt(2, 31 * PS)
    for tokens in (x, y):
        assert asyncio.run(consume(engine, request(tokens + prompt(9, 1), max_tokens=1))) == 1
    with engine.parts.lock:
        cache = engine.parts.cache
        cache.evict_device(engine.parts.device_pool.num_used)
        assert cache.match(x, touch=False).host_len == len(x)
        assert cache.match(y, touch=False).host_len == len(y)
    return x, y


def run_together(engine, reqs: list[GenerateRequest], timeout_s: float = 60.0) -> list[int]:
    """Submit ``reqs`` while the engine loop is held, so that one scheduler pass sees them all
    (the order the deadlock needs), then wait for every one to finish."""
    async def main() -> list[int]:
        lock = engine.parts.lock
        lock.acquire()
        try:
            tasks = [asyncio.create_task(consume(engine, r)) for r in reqs]
            await asyncio.sleep(0.05)  # each task submits at its first step
        finally:
            lock.release()
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    return asyncio.run(main())


@pytest.mark.parametrize("own_tokens", [4, 12], ids=["waiter-fits", "waiter-does-not-fit"])
def test_a_head_request_short_of_room_does_not_deadlock_behind_wait_locks(make_engine, own_tokens):
    """Head ``h`` (system prompt y + 20 pages of its own) and ``w`` (system prompt x + a little)
    both queue a load of their 31-page prefix: 62 of 64 pages. Once both land, ``h`` needs 21
    pages and only 2 are free, the rest locked for ``w``. ``waiter-fits``: ``w`` needs 1-2 pages
    and is admitted past the blocked head, then its finish lets ``h`` in. ``waiter-does-not-fit``:
    ``w`` needs 3 pages, nothing runs, so the wait locks are dropped and ``h`` evicts ``x``.
    Before, admissions stopped at the head for good and both requests hung."""
    engine = make_engine()
    x, y = offloaded_system_prompts(engine)
    h = request(y + prompt(3, 20 * PS))
    w = request(x + prompt(4, own_tokens))
    assert run_together(engine, [h, w]) == [4, 4]
    with engine.parts.lock:
        engine.check_invariants()
        assert engine.kv.in_use == 0 and engine.kv.locked_pages == 0
        assert engine.kv.num_waiting_for_loads == 0
