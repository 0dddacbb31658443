"""A policy added only through the registry reaches every consumer: the cache, the simulator, the
configuration and the engine. The toy policy here (``mru``: most recently used first) exists only
while the ``mru`` fixture holds it registered, so other tests see the real registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from context_forge.cache import (
    EvictionPolicy, PagePool, PolicyContext, RadixCache, RadixNode, available_policies, build_policy,
    policy_class, register_policy, serving_policies,
)
from context_forge.cache import policy as policy_module
from context_forge.config import ConfigError, ServerConfig
from context_forge.sim.simulator import SimConfig, Simulator
from context_forge.trace import parse_trace
from context_forge.trace.generators import generate
from engine_support import settle
from test_engine_generate import greedy, prompt, run, token_ids


def path_tokens(node) -> list[int]:
    """Token ids from the root through the end of ``node``."""
    parts = []
    while node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return [t for part in reversed(parts) for t in part]

TOY = "mru"


class MRUPolicy(EvictionPolicy):
    """Most recently used first; counts its key() calls (class-wide, reset by the fixture)."""

    calls: ClassVar[int] = 0

    def __init__(self, **_: Any) -> None:
        pass

    def key(self, node: RadixNode) -> tuple:
        MRUPolicy.calls += 1
        return (-node.last_access,)


@pytest.fixture
def mru() -> Iterator[type[MRUPolicy]]:
    registry = policy_module._POLICIES
    assert TOY not in registry
    register_policy(TOY)(MRUPolicy)
    MRUPolicy.calls = 0
    try:
        yield MRUPolicy
    finally:
        del registry._classes[TOY]
        MRUPolicy.calls = 0


def test_registration_is_visible_and_undone(mru: type[MRUPolicy]) -> None:
    assert TOY in available_policies() and TOY in serving_policies()
    assert policy_class(TOY) is mru and mru.name == TOY
    assert isinstance(build_policy(TOY, PolicyContext()), mru)
    with pytest.raises(ValueError, match="already registered"):
        register_policy(TOY)(MRUPolicy)


def test_registry_is_clean_without_the_fixture() -> None:
    assert TOY not in available_policies()
    with pytest.raises(ValueError, match=r"unknown eviction policy 'mru'; available: .*lru"):
        policy_class(TOY)


# ------------------------------------------------------------------------------- cache


def _put(cache: RadixCache, tokens: list[int]) -> RadixNode:
    pages = cache.alloc_device(len(tokens) // cache.page_size)
    res = cache.insert(tokens, pages)
    cache.device_pool.free(res.redundant(pages))
    return res.node


@pytest.mark.parametrize("policy, victim", [(TOY, "a"), ("lru", "b")])
def test_cache_evicts_by_the_toy_key(mru: type[MRUPolicy], policy: str, victim: str) -> None:
    cache = RadixCache(2, PagePool(16, "device"), None, build_policy(policy, PolicyContext()))
    nodes = {name: _put(cache, [10 * i + k for k in range(4)]) for i, name in enumerate("abc")}
    cache.match(path_tokens(nodes["a"]))  # a is now the most recently used, b the least
    assert cache.evict_device(1) == 2
    gone = [n for n, node in nodes.items() if node.device_pages is None]
    assert gone == [victim]
    cache.check(external_device_pages=0)
    assert (mru.calls > 0) == (policy == TOY)


# ------------------------------------------------------------------------------- simulator

PEER = {"rounds": 4, "system_tokens": 256, "input_tokens": 64, "output_tokens": 8, "history_limit": 1024}


def _peer_trace():
    return parse_trace(json.dumps(r) for r in generate("peer", seed=0, **PEER))


@pytest.mark.parametrize("host_tokens", [0, 1024])
def test_simulator_runs_the_toy_policy(mru: type[MRUPolicy], host_tokens: int) -> None:
    trace = _peer_trace()
    biggest = max(r.prompt_len + r.output_tokens for r in trace.requests)
    device = -(-biggest // 16) * 16 + 128  # room for one request and a little cache: evictions

    def sim(policy: str):
        s = Simulator(trace, SimConfig(policy=policy, device_tokens=device, host_tokens=host_tokens,
                                       page_size=16, load_ahead_step=2))
        result = s.run()  # ends with cache.check(external_device_pages=0)
        return s, result

    toy_sim, toy = sim(TOY)
    assert isinstance(toy_sim.cache.policy, mru) and mru.calls > 0
    assert not toy_sim.prefetch_on  # the toy's class does not declare ``prefetches``
    lru_sim, lru = sim("lru")
    total = sum(r.prompt_len for r in trace.requests)
    for r in (toy, lru):
        assert r.requests == len(trace.requests) and r.prompt_tokens == total
        assert r.prompt_tokens == r.device_hit_tokens + r.loaded_tokens + r.recomputed_tokens
        assert r.evicted_device_pages > 0
    assert toy.policy == TOY and toy.load_ahead_step == 0
    # The peer cycle (4 agents, each with its own system prompt) reuses more than the device holds:
    # LRU evicts each prefix just before it comes round again (the classic thrash), MRU keeps the
    # older part of the cycle. Different decisions, and here more device hits.
    assert toy.device_hit_tokens > lru.device_hit_tokens
    assert toy_sim.cache.stats != lru_sim.cache.stats


# ------------------------------------------------------------------------------- configuration


def test_config_choices_come_from_the_registry(mru: type[MRUPolicy]) -> None:
    assert ServerConfig(radix_eviction_policy=TOY).radix_eviction_policy == TOY
    with pytest.raises(ConfigError) as err:
        ServerConfig(radix_eviction_policy="nosuch")
    message = str(err.value)
    assert "radix_eviction_policy" in message and "'nosuch'" in message
    for name in serving_policies():
        assert name in message
    assert TOY in message and "belady" not in message


def test_config_rejects_an_unknown_policy_without_the_toy() -> None:
    with pytest.raises(ConfigError, match=r"radix_eviction_policy: expected one of lru, kvflow, pbkv"):
        ServerConfig(radix_eviction_policy=TOY)


def test_config_rejects_belady_for_serving() -> None:
    assert not policy_class("belady").serving
    with pytest.raises(ConfigError, match=r"radix_eviction_policy: 'belady' is not allowed: .*simulator-only"):
        ServerConfig(radix_eviction_policy="belady")


# ------------------------------------------------------------------------------- engine


def test_engine_serves_with_the_toy_policy(mru: type[MRUPolicy], make_engine: Any) -> None:
    jobs = [prompt(seed, 200) for seed in range(8)]  # 8 x 200 prompt tokens > the 1,024-token pool
    ref = make_engine()
    try:
        want = [token_ids(run(ref, p, greedy(6))) for p in jobs]
    finally:
        ref.shutdown()
    engine = make_engine(radix_eviction_policy=TOY)
    try:
        assert engine.parts.config.radix_eviction_policy == TOY
        cache = engine.parts.cache
        assert isinstance(cache.policy, mru)
        got = [token_ids(run(engine, p, greedy(6))) for p in jobs]
        again = token_ids(run(engine, jobs[-1], greedy(6)))  # the last prompt, cached
        settle(engine)
        assert got == want and again == want[-1]
        assert all(len(t) == 6 for t in got)
        assert cache.stats.device_evicted_pages > 0 and mru.calls > 0
    finally:
        engine.shutdown()
