"""`workflow.arrivals.ArrivalOrder`: the earliest unfinished request per scoped key and per bare
agent, its change feed, and how the cache ranks KV that waiting requests need by it."""

from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.cache.policy import rank_key
from context_forge.workflow.arrivals import ArrivalOrder
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.scope import scope_key


def test_the_earliest_unfinished_request_orders_each_key() -> None:
    order = ArrivalOrder()
    feed = order.subscribe()
    order.arrived("w1", "coder")
    order.arrived("w2", "coder")
    order.arrived("w2", "tester")
    assert feed.drain() == {scope_key("w1", "coder"), scope_key("w2", "coder"), scope_key("w2", "tester"),
                            "coder", "tester"}
    assert order.first(scope_key("w1", "coder")) == 0 and order.first(scope_key("w2", "coder")) == 1
    assert order.first("coder") == 0 and order.first("tester") == 2
    order.finished("w2", "coder")
    assert feed.drain() == {scope_key("w2", "coder")}, "the bare agent's earliest request is still w1's"
    assert order.first(scope_key("w2", "coder")) is None and order.first("coder") == 0
    order.finished("w1", "coder")
    assert feed.drain() == {scope_key("w1", "coder"), "coder"}
    assert order.first("coder") is None
    order.finished("w1", "coder")  # nothing left to finish: ignored
    order.forget("w2")
    assert order.first("tester") is None and feed.drain() == {scope_key("w2", "tester"), "tester"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["arrive", "finish", "forget"]), st.sampled_from(["w1", "w2", "w3"]),
                          st.sampled_from(["a", "b"])), max_size=40))
def test_first_matches_a_brute_force_queue(ops: list[tuple[str, str, str]]) -> None:
    order, pending, seq = ArrivalOrder(), [], 0
    for op, wf, agent in ops:
        if op == "arrive":
            order.arrived(wf, agent)
            pending.append((seq, wf, agent))
            seq += 1
        elif op == "finish":
            order.finished(wf, agent)
            mine = [p for p in pending if p[1:] == (wf, agent)]
            if mine:
                pending.remove(mine[0])
        else:
            order.forget(wf)
            pending = [p for p in pending if p[1] != wf]
        for w in ("w1", "w2", "w3"):
            for a in ("a", "b"):
                want = min((s for s, pw, pa in pending if (pw, pa) == (w, a)), default=None)
                assert order.first(scope_key(w, a)) == want
        for a in ("a", "b"):
            assert order.first(a) == min((s for s, _, pa in pending if pa == a), default=None)


def test_live_workflows_keep_the_order_through_requests_and_finishes() -> None:
    live = LiveWorkflows()
    live.register("w", WorkflowGraph([AgentSpec("a"), AgentSpec("b")]))
    live.on_request("w", "b")
    live.on_request("w", "a")
    live.on_request("t", "a")  # a dynamic workflow
    scoped = live.scoped_graph_priority
    assert [scoped.arrival(k) for k in (scope_key("w", "b"), scope_key("w", "a"), scope_key("t", "a"), "a")] \
        == [0, 1, 2, 1]
    live.on_request_finished("w", "a")
    assert scoped.arrival("a") == 2
    live.finish("t")
    assert scoped.arrival("a") is None and scoped.arrival(scope_key("w", "b")) == 0


def test_kv_of_waiting_requests_goes_last_within_the_due_level_latest_arrival_first() -> None:
    due_now = [rank_key(0.0, 4, 5.0), rank_key(0.0, 4, 9.0, declared=True)]
    waiting = [rank_key(0.0, 4, 1.0, arrival=7), rank_key(0.0, 4, 2.0, arrival=3)]
    later = rank_key(1.0, 4, 1.0, arrival=2)
    assert sorted([*waiting, later, *due_now]) == [later, *due_now, *waiting], \
        "a step away first, then due agents not waiting, then waiting ones, the latest arrival first"
    assert later == rank_key(1.0, 4, 1.0), "the order only counts among agents due now"


def test_the_cache_gives_up_the_kv_of_the_latest_waiting_request_first() -> None:
    """kvflow and pbkv over real LiveWorkflows: three workers due at once, two of them waiting
    (the second arrived first); eviction takes the one not waiting, then the latest arrival."""
    from context_forge.cache import CountingTransfer, PagePool, RadixCache
    from context_forge.cache.policy import PolicyContext, build_policy

    for policy in ("kvflow", "pbkv"):
        live = LiveWorkflows()
        cache = RadixCache(2, PagePool(64, "device"), None, build_policy(policy, PolicyContext(live)),
                           CountingTransfer())
        live.register("w", WorkflowGraph([AgentSpec("w0"), AgentSpec("w1"), AgentSpec("w2")]))
        nodes = {}
        for i, agent in enumerate(["w0", "w1", "w2"]):
            tokens = [i * 10 + k for k in range(4)]
            pages = cache.alloc_device(2)
            nodes[agent] = cache.insert(tokens, pages, scope_key("w", agent)).node
        live.on_request("w", "w2")
        live.on_request("w", "w1")
        order = []
        for _ in range(3):
            before = {a for a, n in nodes.items() if n.device_pages is not None}
            cache.evict_device(1)
            order += sorted(a for a in before if nodes[a].device_pages is None)
        assert order == ["w0", "w1", "w2"], policy
