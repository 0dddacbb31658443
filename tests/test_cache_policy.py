"""Eviction policies driven by real workflow state: shared-prefix protection, exact victim choice
under priority changes, registry."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.cache import CountingTransfer, PagePool, RadixCache, available_policies, get_policy
from context_forge.workflow.graph import WorkflowGraph
from context_forge.workflow.live import LiveWorkflows

CHAIN = WorkflowGraph.from_dict({"agents": [
    {"agent_id": "planner"}, {"agent_id": "coder", "depends_on": ["planner"]},
    {"agent_id": "tester", "depends_on": ["coder"]}, {"agent_id": "reviewer", "depends_on": ["tester"]}]})


def make(policy="kvflow", dev=64, host=0, page_size=2, evict_pri_level=4):
    live = LiveWorkflows()
    source = live.graph_priority if policy == "kvflow" else live.blended_priority
    pol = get_policy(policy, priority=source, evict_pri_level=evict_pri_level)
    cache = RadixCache(page_size, PagePool(dev, "device"), PagePool(host, "host") if host else None,
                       pol, CountingTransfer())
    return cache, live


def put(cache, tokens, agent):
    pages = cache.alloc_device(len(tokens) // cache.page_size)
    res = cache.insert(tokens, pages, agent)
    cache.device_pool.free(res.redundant(pages))
    return res.node


def test_registry_lists_the_four_policies():
    assert {"lru", "kvflow", "pbkv", "belady"} <= set(available_policies())


def test_kvflow_evicts_the_agent_farthest_from_running():
    cache, live = make()
    live.register("wf", CHAIN)
    nodes = {a: put(cache, [i * 10 + k for k in range(4)], a)
             for i, a in enumerate(["planner", "coder", "tester", "reviewer"])}
    live.on_request("wf", "planner")
    live.on_request_finished("wf", "planner")
    # steps now: coder 0, tester 1, reviewer 2, planner done (inf)
    order = []
    for _ in range(4):
        before = {a: n.device_pages is not None for a, n in nodes.items()}
        cache.evict_device(1)
        order += [a for a, n in nodes.items() if before[a] and n.device_pages is None]
    assert order == ["planner", "reviewer", "tester", "coder"]


def test_shared_prefix_is_protected_by_its_most_urgent_user():
    cache, live = make()
    live.register("wf", CHAIN)
    system = list(range(100, 108))
    put(cache, system + [1, 1], "reviewer")   # far away
    put(cache, system + [2, 2], "coder")      # due soon
    shared = cache.match(system, touch=False).last_node
    assert shared.agents == {"reviewer", "coder"}
    pol = cache.policy
    assert pol.node_priority(shared) == min(live.graph_priority.priority(a) for a in shared.agents)
    assert pol.node_priority(shared) == live.graph_priority.priority("coder") == 1
    # evicting everything evictable except the coder's branch never takes the shared prefix first
    cache.evict_device(1)
    assert shared.device_pages is not None
    assert cache.match(system + [2, 2], touch=False).device_len == 10


def test_anonymous_kv_ranks_at_the_farthest_exact_level():
    """KV no tagged request used (a warm-up) goes after KV expected by no one and after KV
    ranked beyond ``evict_pri_level``, before KV a live instance needs sooner; KV whose tags the
    usage rules removed is not anonymous (it was touched) and goes first."""
    chain6 = WorkflowGraph.from_dict({"agents": [{"agent_id": f"a{i}", "depends_on": [f"a{i - 1}"] if i else []}
                                                 for i in range(7)]})
    cache, live = make(evict_pri_level=4)
    live.register("wf", chain6)
    nodes = {"anonymous": put(cache, [90, 91, 92, 93], None),
             "now": put(cache, [10, 11, 12, 13], "a0"),
             "far": put(cache, [60, 61, 62, 63], "a6"),
             "dead": put(cache, [70, 71, 72, 73], "gone")}
    cache._remove_agent(nodes["dead"], "gone")  # as the usage rules drop a tag
    assert nodes["dead"].touched and not nodes["dead"].agents and not nodes["anonymous"].touched
    assert live.graph_priority.priority("a6") == 6 and live.graph_priority.priority("a0") == 0
    order = []
    for _ in range(4):
        before = {k for k, n in nodes.items() if n.device_pages is not None}
        cache.evict_device(1)
        order += sorted(k for k in before if nodes[k].device_pages is None)
    assert order == ["dead", "far", "anonymous", "now"]


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "start", "finish", "evict", "touch"]),
                              st.integers(0, 7), st.sampled_from(["planner", "coder", "tester", "reviewer"])),
                    min_size=5, max_size=60),
       policy=st.sampled_from(["kvflow", "pbkv", "lru"]))
def test_victim_always_has_the_minimum_key(ops, policy):
    """The lazily updated heap must pick exactly the minimum-key candidate even though agent
    priorities change underneath it (workflow events) and nodes are touched and split."""
    live = LiveWorkflows()
    source = live.graph_priority if policy == "kvflow" else live.blended_priority
    pol = get_policy(policy, priority=source, evict_pri_level=2) if policy != "lru" else get_policy("lru")
    cache = RadixCache(2, PagePool(48, "device"), PagePool(24, "host"), pol, CountingTransfer())
    live.register("wf", WorkflowGraph(CHAIN.agents, repeat=True))
    running: dict[str, int] = {}
    evicted_keys = []
    orig = cache._evict_device_node

    def observe(node):
        cands = [n for n in cache.nodes() if cache._device_candidate(n)] + [node]
        assert pol.key(node) == min(pol.key(n) for n in cands)
        evicted_keys.append(pol.key(node))
        return orig(node)

    cache._evict_device_node = observe
    for op, x, agent in ops:
        if op == "put":
            tokens = [x // 2, x // 2 + 50] + [x, x + 1, x + 2, x + 3][: 2 + x % 3]
            if cache.alloc_device(0) is not None and cache.device_pool.num_free >= len(tokens) // 2:
                put(cache, tokens, agent)
        elif op == "touch":
            cache.match([x // 2, x // 2 + 50, x, x + 1], agent_id=agent)
        elif op == "start" and not running.get(agent):
            live.on_request("wf", agent)
            running[agent] = 1
        elif op == "finish" and running.get(agent):
            live.on_request_finished("wf", agent)
            running[agent] = 0
        elif op == "evict":
            cache.evict_device(1 + x % 3)
        cache.check(external_device_pages=0)
    assert all(math.isfinite(k[-1]) for k in evicted_keys)
