"""Per-workflow (scoped) priorities: the same agent name in two workflows is ranked separately."""

import math

from context_forge.cache import CountingTransfer, PagePool, RadixCache, get_policy
from context_forge.workflow import LiveWorkflows, WorkflowGraph, scope_key, split_scope

CHAIN = WorkflowGraph.from_dict({"agents": [
    {"agent_id": "planner"}, {"agent_id": "coder", "depends_on": ["planner"]},
    {"agent_id": "reviewer", "depends_on": ["coder"]}]})


def test_scope_key_round_trip():
    assert split_scope(scope_key("wf-1", "coder")) == ("wf-1", "coder")
    assert split_scope(scope_key(None, "coder")) == (None, "coder")


def test_scoped_values_follow_each_instance():
    live = LiveWorkflows()
    live.register("a", CHAIN)
    live.register("b", CHAIN)
    live.on_request("a", "planner")
    live.on_request_finished("a", "planner")
    scoped = live.scoped_graph_priority
    assert scoped.priority(scope_key("a", "coder")) == 0
    assert scoped.priority(scope_key("b", "coder")) == 1
    assert scoped.priority(scope_key("a", "planner")) == math.inf  # done for good in a plain graph
    assert scoped.priority("coder") == live.graph_priority.priority("coder") == 0  # unscoped fallback
    assert scoped.priority(scope_key("ghost", "coder")) == math.inf


def test_scoped_feed_reports_instance_keys():
    live = LiveWorkflows()
    feed = live.scoped_graph_priority.subscribe()
    live.register("a", CHAIN)
    assert {scope_key("a", x) for x in ("planner", "coder", "reviewer")} <= feed.drain()
    live.on_request("a", "planner")
    live.on_request_finished("a", "planner")
    changed = feed.drain()
    assert scope_key("a", "coder") in changed and not any(k.startswith("b") for k in changed)


def test_undeclared_workflows_branches_rank_by_their_own_recurrence():
    """A private branch of an undeclared workflow is reused when its agent comes back to that
    workflow: it ranks by the agent's learned recurrence there (running now: 0), and an agent the
    workflow called only once is not expected back."""
    live = LiveWorkflows(weight=0.5)
    for _ in range(3):
        for agent in ("x", "y", "z"):
            live.on_request("dyn", agent)
            live.on_request_finished("dyn", agent)
    live.on_request("dyn", "once")
    live.on_request_finished("dyn", "once")
    live.on_request("dyn", "x")
    scoped = live.scoped_blended_priority
    assert scoped.priority(scope_key("dyn", "x")) == 0  # running now
    assert 0 < scoped.priority(scope_key("dyn", "y")) < math.inf
    assert scoped.priority(scope_key("dyn", "once")) == math.inf
    assert scoped.priority(scope_key("other", "y")) == math.inf


def test_cache_ranks_a_finished_workflows_branch_below_a_live_one():
    """With bare agent names, the finished workflow's planner branch would look as urgent as the
    live workflow's planner; scoped tags tell them apart."""
    live = LiveWorkflows()
    cache = RadixCache(2, PagePool(16, "device"), None,
                       get_policy("kvflow", priority=live.scoped_graph_priority), CountingTransfer())
    live.register("old", CHAIN)
    live.register("new", CHAIN)

    def put(tokens, wf, agent):
        pages = cache.alloc_device(len(tokens) // 2)
        res = cache.insert(tokens, pages, scope_key(wf, agent))
        cache.device_pool.free(res.redundant(pages))
        return res.node

    old = put([1, 2, 3, 4], "old", "planner")
    new = put([5, 6, 7, 8], "new", "planner")
    live.finish("old")
    cache.evict_device(2)
    assert old.parent is None and new.device_pages is not None
