"""Brute-force check of the Belady oracle inside a closed-loop replay (regression test).

Every device eviction made under the ``belady`` policy must pick a node whose oracle next use is
the farthest among all eviction candidates at that moment (unlocked device leaves), recomputed
from scratch by walking the whole tree. A stale heap key (a node whose next use moved when a
request started, or the lower half of a split) breaks this.
"""

from __future__ import annotations

import json

from context_forge.cache import RadixNode
from context_forge.sim.simulator import SimConfig, Simulator
from context_forge.trace import Trace, parse_trace
from context_forge.trace.generators import generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SHAPES: dict[str, dict] = {
    "peer": {"rounds": 3, "system_tokens": 192, "input_tokens": 48, "output_tokens": 6, "history_limit": 768},
    "concurrent": {"workflows": 4, "rounds": 2, "system_tokens": 160, "private_system_tokens": 96,
                   "input_tokens": 48, "output_tokens": 6, "stagger_s": 0.05, "think_s": 0.05,
                   "history_limit": 768},
    "fanout": {"workflows": 2, "rounds": 2, "width": 3, "system_tokens": 160, "plan_tokens": 48,
               "input_tokens": 48, "output_tokens": 6, "history_limit": 768},
    "dynamic": {"workflows": 5, "steps": 4, "system_tokens": 160, "input_tokens": 48, "output_tokens": 6,
                "history_limit": 768},
}


def build(kind: str, seed: int) -> Trace:
    return parse_trace(json.dumps(r) for r in generate(kind, seed=seed, **SHAPES[kind]))


def checked_run(trace: Trace, device: int, host: int, page_size: int) -> int:
    """Replay under belady, checking every eviction; returns how many evictions were checked."""
    sim = Simulator(trace, SimConfig(policy="belady", device_tokens=device, host_tokens=host,
                                     page_size=page_size, load_ahead_step=0))
    cache, oracle = sim.cache, sim.oracle
    assert oracle is not None
    evict = cache._evict_device_node
    checked = 0

    def audited(node: RadixNode) -> int:
        nonlocal checked
        candidates = [n for n in cache.nodes() if cache._device_candidate(n)]
        assert node in candidates, f"evicting a non-candidate {node!r}"
        farthest = max(oracle.next_use(n) for n in candidates)
        chosen = oracle.next_use(node)
        assert chosen == farthest, f"evicted {node!r} next used at {chosen}, but a candidate is unused until {farthest}"
        checked += 1
        return evict(node)

    cache._evict_device_node = audited  # type: ignore[method-assign]
    sim.run()
    return checked


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SHAPES)), seed=st.integers(0, 50), page_size=st.sampled_from([1, 8, 16]),
       slack_pages=st.integers(0, 40), host_ratio=st.sampled_from([0, 1, 2]))
def test_every_belady_eviction_takes_the_farthest_next_use(kind: str, seed: int, page_size: int,
                                                           slack_pages: int, host_ratio: int) -> None:
    trace = build(kind, seed)
    need = max(r.prompt_len + r.output_tokens for r in trace.requests)
    device = (-(-need // page_size) + slack_pages) * page_size
    checked = checked_run(trace, device, host_ratio * device, page_size)
    total = sum(r.prompt_len for r in trace.requests)
    if total > 3 * device:
        assert checked > 0


def test_fixed_contended_cases() -> None:
    for kind, page_size in (("concurrent", 1), ("concurrent", 16), ("peer", 16), ("dynamic", 8)):
        trace = build(kind, 3)
        device = (max(r.prompt_len + r.output_tokens for r in trace.requests) + 128) // page_size * page_size
        assert checked_run(trace, device, 2 * device, page_size) > 10


def test_oracle_next_use_follows_admissions() -> None:
    from context_forge.cache import PagePool, RadixCache
    from context_forge.sim.oracle import BeladyOracle, ideal_times

    ps = 4
    shared = list(range(100, 108))
    prompts = [shared + [1, 2, 3, 4], [9] * 8, shared + [5, 6, 7, 8]]
    times = ideal_times([[], [], [0]], [0.0, 0.0, 0.5], [1.0, 2.0, 0.0], [0.25, 0.0, 0.0])
    assert times == [1.0, 2.0, 1.75]
    oracle = BeladyOracle(prompts, times, ps)
    cache = RadixCache(ps, PagePool(16, "device"))
    res = cache.insert(prompts[0], cache.device_pool.alloc(3))
    node = res.node
    assert oracle.next_use(node) == 1.0
    assert oracle.frontier == float("-inf")
    oracle.started(0)
    assert oracle.frontier == 1.0
    assert oracle.next_use(node) == 1.75  # keyed by its first page, which request 2 also uses
    cache.match(prompts[2])  # splits after the shared 8 tokens
    upper = node.parent
    assert upper is not None and len(upper.key) == 8 and len(node.key) == 4
    assert oracle.next_use(upper) == 1.75  # request 2 still to come
    assert oracle.next_use(node) == float("inf")  # only request 0 used the tail
    oracle.started(2)
    assert oracle.next_use(upper) == float("inf")
    assert oracle.frontier == 1.75
    oracle.unstart(2, prompts[2], times[2])
    assert oracle.next_use(upper) == 1.75
