"""SGLang's real UnifiedRadixCache (Python tree core, HiCache on) driven by the workflow plugin.

Runs on CPU with the stand-ins of `sglang_support.standins` (no GPU here); requests go through
SGLang's own Req / match / init_load_back / release_kv_cache path (`sglang_support.bench`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from unittest import mock

import pytest
import sglang_support  # noqa: F401  (imports SGLang's cache layer; fails if SGLang is missing)
from context_forge.sglang.cache import WorkflowRadixCache
from context_forge.sglang.metadata import to_custom_params
from context_forge.sglang.registry import WorkflowRegistry
from context_forge.sglang.settings import PluginSettings
from context_forge.sglang.strategy import WorkflowStrategy
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.common import release_kv_cache
from sglang.srt.mem_cache.unified_cache.unified_tree_core import UnifiedTreeCore
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
from sglang_support.bench import BenchConfig, CacheBench, RequestDriver
from sglang_support.standins import cpu_hicache

PS = 4


def prompt(tag: int, pages: int = 2) -> list[int]:
    return [tag * 1000 + i for i in range(pages * PS)]


@pytest.fixture
def make() -> Iterator:
    benches: list[CacheBench] = []

    def build(**settings: object) -> tuple[CacheBench, RequestDriver]:
        bench = CacheBench(BenchConfig(page_size=PS), WorkflowRegistry(PluginSettings(**settings)))
        benches.append(bench)
        return bench, RequestDriver(bench)

    with cpu_hicache():
        yield build
        for bench in benches:
            bench.close()


def meta(agent: str, upcoming: dict[str, float] | None = None, wf: str = "wf", final: bool = False) -> dict:
    return to_custom_params(wf, agent, upcoming, final)


def on_device(bench: CacheBench, node_id: int) -> bool:
    """Whether a request's last node is still on the device (read without touching LRU state)."""
    try:
        bench.cache.tree_core.node_by_id(node_id)
    except KeyError:
        return False
    return not bench.cache.tree_core.is_full_device_evicted(node_id)


def eviction_order(bench: CacheBench, nodes: dict[str, int]) -> list[str]:
    """Evict one node at a time; name the requests' last nodes in the order they leave the device."""
    order: list[str] = []
    resident = {name for name, node in nodes.items() if on_device(bench, node)}
    while resident:
        assert bench.cache.evict(EvictParams(num_tokens=1)).num_tokens_evicted > 0
        gone = sorted(name for name in resident if not on_device(bench, nodes[name]))
        order += gone
        resident -= set(gone)
    return order


def test_factory_builds_sglangs_cache_with_python_core_and_hicache(make) -> None:
    bench, _ = make()
    cache = bench.cache
    assert isinstance(cache, WorkflowRadixCache) and isinstance(cache, UnifiedRadixCache)
    assert type(cache.tree_core) is UnifiedTreeCore
    assert cache.cache_controller is not None and cache.cache_controller.io_backend == "direct"
    assert isinstance(cache.tree_core.eviction_strategy, WorkflowStrategy)
    assert cache.tree_core.eviction_strategy.registry is cache.workflows
    assert bench.worker.counters == [cache.cache_controller.layer_done_counter]


def test_eviction_follows_steps_to_execution_not_recency(make) -> None:
    bench, driver = make(priority="steps", enable_prefetch=False)
    nodes = {name: driver.run(name, prompt(i), meta(name)).last_node for i, name in enumerate("abc", 1)}
    nodes["planner"] = driver.run("planner", prompt(4), meta("planner", {"a": 3, "b": 1, "c": 2})).last_node
    assert [bench.cache.workflows.priority(x) for x in "abc"] == [3, 1, 2]
    # LRU would go a, b, c, planner; the planner is not expected again (inf) so it goes first.
    assert eviction_order(bench, nodes) == ["planner", "a", "c", "b"]


def test_equal_declared_steps_evict_the_most_recently_used_first(make) -> None:
    """The engine's order within a level (`rank_key`): agents stepping through a loop come back
    to their KV in the order they left it, so the one used last is needed last."""
    bench, driver = make(priority="steps", enable_prefetch=False)
    nodes = {"y": driver.run("y", prompt(2), meta("y", {"x": 2, "y": 2})).last_node}
    nodes["x"] = driver.run("x", prompt(1), meta("x", {"x": 2, "y": 2})).last_node
    assert eviction_order(bench, nodes) == ["x", "y"]


def test_among_agents_due_now_the_latest_arrival_goes_first(make) -> None:
    """The engine's arrival order (`rank_key`'s ``arrival``): of two agents whose requests have
    started, the KV of the one that started last is given up first, whatever the recency says."""
    from context_forge.sglang.metadata import parse_custom_params

    bench, driver = make(priority="steps", enable_prefetch=False)
    plan = {"x": 2, "y": 2}
    nodes = {"y": driver.run("y", prompt(2), meta("y", plan)).last_node}
    nodes["x"] = driver.run("x", prompt(1), meta("x", plan)).last_node
    registry = bench.cache.workflows
    registry.request_started("later-x", parse_custom_params(meta("x", plan)))
    registry.request_started("later-y", parse_custom_params(meta("y", plan)))
    assert [registry.priority(a) for a in "xy"] == [0, 0]
    assert eviction_order(bench, nodes) == ["y", "x"], "most recently used first would give x, y"
    registry.request_finished("later-x")
    registry.request_finished("later-y")


@pytest.mark.parametrize(("level", "expected"), [(1, ["near", "far"]), (6, ["far", "near"])])
def test_steps_beyond_evict_pri_level_share_a_band(make, level: int, expected: list[str]) -> None:
    """Beyond ``evict_pri_level`` ranks fall into the engine's geometric bands (`rank_level`):
    4 and 5 steps share one band above level 1 (declared ranks: most recently used first), but
    stay apart within level 6."""
    bench, driver = make(priority="steps", enable_prefetch=False, load_ahead_step=0, evict_pri_level=level)
    nodes = {"far": driver.run("far", prompt(2), meta("far", {"near": 4, "far": 5})).last_node}
    nodes["near"] = driver.run("near", prompt(1), meta("near", {"near": 4, "far": 5})).last_node
    assert eviction_order(bench, nodes) == expected


def test_anonymous_kv_ranks_at_the_farthest_exact_level(make) -> None:
    """A request without workflow metadata leaves anonymous KV (`anonymous_key`): it outlives KV of
    an agent no one expects and KV ranked beyond ``evict_pri_level``, not KV due sooner."""
    bench, driver = make(priority="steps", enable_prefetch=False, load_ahead_step=0, evict_pri_level=2)
    plan = {"soon": 1, "far": 5}
    nodes = {"anonymous": driver.run("anonymous", prompt(1)).last_node,
             "soon": driver.run("soon", prompt(2), meta("soon", plan)).last_node,
             "far": driver.run("far", prompt(3), meta("far", plan)).last_node,
             "unexpected": driver.run("unexpected", prompt(4), meta("unexpected", plan)).last_node}
    assert bench.cache.workflows.priority("unexpected") == float("inf")
    assert eviction_order(bench, nodes) == ["unexpected", "far", "anonymous", "soon"]


def test_shared_prefix_stays_while_a_near_agent_uses_it(make) -> None:
    bench, driver = make(priority="steps", enable_prefetch=False)
    shared = prompt(1)
    nodes = {"b": driver.run("b", shared, meta("b")).last_node}
    nodes["a"] = driver.run("a", shared + prompt(2, 1), meta("a")).last_node
    nodes["c"] = driver.run("c", prompt(3), meta("c", {"a": 4, "b": 1, "c": 2})).last_node
    strategy = bench.cache.tree_core.eviction_strategy
    assert strategy.steps(bench.cache.tree_core.node_by_id(nodes["b"])) == 1  # a (4) and b (1) use it
    # By recency the shared prefix (last used by a) would go before c; by steps it outlives c.
    assert eviction_order(bench, nodes) == ["a", "c", "b"]


def test_agents_tags_cover_descendants(make) -> None:
    from context_forge.sglang.tags import agents_of

    bench, driver = make(enable_prefetch=False)
    base = prompt(1)
    driver.run("r1", base + prompt(2, 1), meta("a"))
    driver.run("r2", base + prompt(3, 1), meta("b"))  # splits a's node at the shared pages
    tree = bench.cache.tree_core
    split = tree.node_by_id(bench.match(base).last_device_node)
    assert agents_of(split) == {"a", "b"}
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        for child in node.children.values():
            if node is not tree.root_node:
                assert agents_of(child) <= agents_of(node)
            stack.append(child)


def test_due_agents_get_a_load_back(make) -> None:
    bench, driver = make(priority="steps", load_ahead_step=2)
    prompts = {"a": prompt(1), "b": prompt(2)}
    for name, tokens in prompts.items():
        driver.run(name, tokens, meta(name))
    driver.evict_all()
    assert bench.device_len(prompts["a"]) == bench.device_len(prompts["b"]) == 0
    planner = driver.admit("planner", prompt(3), meta("planner", {"a": 1, "b": 3}))
    cache = bench.cache
    with mock.patch.object(cache, "load_back", wraps=cache.load_back) as load_back:
        cache.check_hicache_events()  # what the scheduler calls once per step
    a_node = cache.agent_nodes.nodes_of("a")[0]
    assert [c.args[0] for c in load_back.call_args_list] == [a_node]
    bench.settle()
    assert bench.device_len(prompts["a"]) == 8 and bench.device_len(prompts["b"]) == 0
    assert cache.prefetched_tokens == 8
    indices = cache.path_device_indices(bench.match(prompts["a"]).last_device_node)
    assert bench.read_marker(indices) == [[float(t) for t in prompts["a"]]] * 2
    req = driver.admit("a-next", prompts["a"] + prompt(4, 1), meta("a"))
    assert req.prefix_len == 8
    driver.finish(req)
    driver.finish(planner)


def test_prefetch_skips_running_far_and_oversized(make) -> None:
    bench, driver = make(priority="steps", load_ahead_step=1, prefetch_max_tokens=8)
    prompts = {"run": prompt(1), "far": prompt(2), "big": prompt(3, 3)}
    for name, tokens in prompts.items():
        driver.run(name, tokens, meta(name))
    driver.evict_all()
    driver.admit("run-again", prompt(9), meta("run", {"far": 2, "big": 1}))
    assert bench.cache.workflows.due_agents(["run", "far", "big"]) == ["big"]
    bench.cache.check_hicache_events()
    bench.settle()
    assert bench.cache.prefetched_tokens == 0
    assert all(bench.device_len(p) == 0 for p in prompts.values())


@pytest.mark.parametrize(("upcoming", "loaded"), [({"a": 2, "b": 1}, False), ({"a": 1, "b": 2}, True)])
def test_prefetch_displaces_only_agents_due_later(upcoming: dict[str, int], loaded: bool) -> None:
    with cpu_hicache():
        bench = CacheBench(
            BenchConfig(page_size=PS, device_tokens=16),
            WorkflowRegistry(PluginSettings(priority="steps", load_ahead_step=2)),
        )
        try:
            driver = RequestDriver(bench)
            a_node = driver.run("a", prompt(1), meta("a")).last_node
            driver.evict_all()
            b_node = driver.run("b", prompt(2), meta("b")).last_node
            driver.admit("p", prompt(3), meta("p", upcoming))  # device now full: p (locked) and b
            assert bench.allocator.available_size() == 0
            assert bench.cache.prefetch_due_agents() == (8 if loaded else 0)
            bench.settle()
            assert on_device(bench, a_node) is loaded and on_device(bench, b_node) is not loaded
        finally:
            bench.close()


def test_a_batch_waits_for_an_in_flight_prefetch(make) -> None:
    bench, driver = make(priority="steps", load_ahead_step=2)
    driver.run("a", prompt(1), meta("a"))
    driver.evict_all()
    driver.admit("p", prompt(2), meta("p", {"a": 0}))
    cache = bench.cache
    assert cache.prefetch_due_agents() == 8
    producer = cache.ready_to_load_host_cache()  # a batch built now, loading nothing itself
    assert producer >= 0 and cache.cache_controller.ack_load_queue
    bench.settle()
    assert not cache.cache_controller.ack_load_queue
    assert cache.ready_to_load_host_cache() == -1


def test_prefetch_is_off_without_the_setting(make) -> None:
    bench, driver = make(priority="steps", enable_prefetch=False)
    driver.run("a", prompt(1), meta("a"))
    driver.evict_all()
    driver.admit("p", prompt(2), meta("p", {"a": 0}))
    assert bench.cache.prefetch_due_agents() == 0 and bench.device_len(prompt(1)) == 0


def test_blended_priority_learns_the_next_agent(make) -> None:
    bench, driver = make(priority="blended", enable_prefetch=False)
    nodes = {"other": driver.run("o", prompt(3), meta("other", wf="done", final=True)).last_node}
    for round_ in range(3):
        driver.run(f"p{round_}", prompt(1), meta("plan"))
        nodes["act"] = driver.run(f"a{round_}", prompt(2), meta("act")).last_node
    running = driver.admit("p-live", prompt(1) + prompt(4, 1), meta("plan"))
    registry = bench.cache.workflows
    assert registry.priority("act") < 1 and registry.priority("other") > registry.settings.evict_pri_level
    assert eviction_order(bench, nodes) == ["other", "act"]
    driver.finish(running)


def test_request_lifecycle(make, caplog: pytest.LogCaptureFixture) -> None:
    bench, driver = make(priority="steps", enable_prefetch=False)
    registry = bench.cache.workflows
    req = driver.admit("r1", prompt(1), meta("a", {"b": 1}))
    assert registry.is_tracked("r1") and registry.is_running("a") and registry.priority("a") == 0
    req.kv.kv_committed_len = len(prompt(1))
    release_kv_cache(req, bench.cache, checkpoint=False)  # retraction: not finished
    assert registry.is_running("a")
    bench.cache.release_aborted_request(req.cache_request_handle)
    assert not registry.is_tracked("r1") and not registry.is_running("a")
    driver.run("r2", prompt(2), meta("a", wf="wf-final", final=True))
    assert "wf-final" not in registry.live_workflows()
    with caplog.at_level(logging.WARNING, logger="context_forge.sglang.cache"):
        driver.run("r3", prompt(3), {"workflow_id": 7, "agent_id": "a"})
    assert not registry.is_tracked("r3")
    assert "request r3: ignoring workflow metadata: custom_params.workflow_id must be a string" in caplog.text
    driver.run("r4", prompt(4), {"thinking_budget": 3})
    assert not registry.is_tracked("r4")
