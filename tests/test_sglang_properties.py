"""Invariants of the workflow policy on SGLang's real cache over random multi-agent workloads."""
from __future__ import annotations

import math

import pytest
from context_forge.cache.policy import rank_level
import sglang_support  # noqa: F401  (imports SGLang's cache layer; fails if SGLang is missing)
from context_forge.sglang.metadata import to_custom_params
from context_forge.sglang.registry import WorkflowRegistry
from context_forge.sglang.settings import PluginSettings
from context_forge.sglang.tags import agents_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang_support.bench import BenchConfig, CacheBench, RequestDriver
from sglang_support.standins import cpu_hicache

PS = 4
AGENTS = ("a", "b", "c", "d")

request = st.tuples(
    st.sampled_from(AGENTS),
    st.sampled_from([None, 1, 2]),  # shared prefix (one page) or none
    st.integers(1, 2),  # own pages
    st.dictionaries(st.sampled_from(AGENTS), st.integers(0, 6), max_size=4),
)


def left_device(tree, node_id: int) -> bool:
    try:
        tree.node_by_id(node_id)
    except KeyError:
        return True
    return tree.is_full_device_evicted(node_id)


@pytest.fixture(scope="module")
def hicache():
    with cpu_hicache():
        yield


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(request, min_size=1, max_size=8), st.integers(0, 5))
def test_every_victim_is_the_least_urgent_leaf(hicache, workload, level) -> None:
    bench = CacheBench(
        BenchConfig(page_size=PS, device_tokens=48),
        WorkflowRegistry(PluginSettings(priority="steps", enable_prefetch=False, load_ahead_step=0, evict_pri_level=level)),
    )
    try:
        driver = RequestDriver(bench)
        for i, (agent, shared, pages, upcoming) in enumerate(workload):
            head = [] if shared is None else [shared * 10_000 + t for t in range(PS)]
            tokens = head + [(i + 5) * 10_000 + t for t in range(pages * PS)]
            driver.run(f"r{i}", tokens, to_custom_params("wf", agent, upcoming))
        tree = bench.cache.tree_core
        stack = [tree.root_node]
        while stack:  # a node's agents include every descendant's
            node = stack.pop()
            for child in node.children.values():
                if node is not tree.root_node:
                    assert agents_of(child) <= agents_of(node)
                stack.append(child)
        registry = bench.cache.workflows

        def tier(node) -> float:  # the spec: nearest agent using the node or below, in the engine's levels
            steps = min((registry.priority(a) for a in agents_of(node)), default=math.inf)
            return rank_level(steps, level)

        def declared(node) -> bool:  # ranked by a client's declared steps, not a guess
            steps = min((registry.priority(a) for a in agents_of(node)), default=math.inf)
            return steps < math.inf and any(registry.priority(a) == steps and registry.declared.priority(a) == steps
                                            for a in agents_of(node))

        while tree.evictable_device_leaves:
            leaves = {node.id: node for node in tree.evictable_device_leaves}
            far = max(tier(n) for n in leaves.values())
            group = [n for n in leaves.values() if tier(n) == far]
            guesses = [n for n in group if not declared(n)]
            # Within the tier: guesses first, least recently used first; else declared ranks, most recent first.
            when = min(n.last_access_time for n in guesses) if guesses else max(n.last_access_time for n in group)
            expected = {n.id for n in (guesses or group) if n.last_access_time == when}
            assert bench.cache.evict(EvictParams(num_tokens=1)).num_tokens_evicted > 0
            victims = {nid for nid in leaves if left_device(tree, nid)}
            assert victims == expected
    finally:
        bench.close()
