"""PrefetchPlanner over real LiveWorkflows (tracker + predictor) and a real two-tier radix cache."""

from __future__ import annotations

import subprocess
import sys

import pytest
from context_forge.cache import CountingTransfer, PagePool, RadixCache, get_policy
from context_forge.prefetch.planner import DueAgent, PlannerConfig, PrefetchPlanner, due_footprint, host_only_pages
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.live import LiveWorkflows

PS = 2
CHAIN = WorkflowGraph([AgentSpec("planner"), AgentSpec("coder", ("planner",)),
                       AgentSpec("reviewer", ("coder",))])


def make(load_ahead: int = 2, **kw) -> tuple[LiveWorkflows, RadixCache, PrefetchPlanner]:
    wf = LiveWorkflows()
    cache = RadixCache(PS, PagePool(64, "device"), PagePool(128, "host"), get_policy("lru"), CountingTransfer())
    return wf, cache, PrefetchPlanner(wf, cache, PlannerConfig(load_ahead_step=load_ahead, **kw))


def insert(cache: RadixCache, tokens: list[int], agent: str):
    pages = cache.alloc_device(len(tokens) // PS)
    res = cache.insert(tokens, pages, agent)
    cache.device_pool.free(res.redundant(pages))
    return res.node


def run_agent(wf: LiveWorkflows, cache: RadixCache, planner: PrefetchPlanner, wid: str, agent: str,
              tokens: list[int]):
    wf.on_request(wid, agent)
    node = insert(cache, tokens, agent)
    planner.note_insert(wid, agent, node)
    wf.on_request_finished(wid, agent)
    return node


def toks(seed: int, pages: int, shared: list[int] = ()) -> list[int]:
    return list(shared) + [seed * 100 + i for i in range(pages * PS)]


def test_graph_agents_due_within_the_look_ahead_in_step_order():
    wf, _, planner = make(load_ahead=1)
    wf.register("w", CHAIN)
    assert planner.due_agents("w") == [DueAgent("planner", 0.0), DueAgent("coder", 1.0)]
    wf.on_request("w", "planner")
    wf.on_request_finished("w", "planner")
    assert [d.agent_id for d in planner.due_agents("w")] == ["coder", "reviewer"]
    assert [d.agent_id for d in planner.due_agents("w", max_steps=0)] == ["coder"]
    assert planner.due_agents("w", max_steps=-1) == []
    assert planner.due_agents("unknown") == []


def test_targets_are_the_due_agents_offloaded_nodes_most_urgent_first():
    wf, cache, planner = make()
    wf.register("w", WorkflowGraph(CHAIN.agents, repeat=True))
    system = toks(9, 2)
    nodes = {a: run_agent(wf, cache, planner, "w", a, toks(i, 3, system))
             for i, a in enumerate(["planner", "coder", "reviewer"])}
    assert planner.targets("w") == []  # everything is on the device
    cache.evict_device(cache.device_pool.num_used)
    assert all(n.device_pages is None for n in nodes.values())
    targets = planner.targets("w")
    assert [(t.agent_id, t.steps) for t in targets] == [("planner", 0.0), ("coder", 1.0), ("reviewer", 2.0)]
    assert [t.node for t in targets] == [nodes["planner"], nodes["coder"], nodes["reviewer"]]
    assert host_only_pages(nodes["coder"]) == 5  # its own 3 pages and the shared 2 above them
    assert [t.agent_id for t in planner.targets("w", max_steps=1)] == ["planner", "coder"]


def test_the_due_footprint_counts_what_other_due_prompts_will_take_once():
    """``due_targets`` lists every due agent with its node, on the device or not; ``due_footprint``
    counts on the other agents' paths the host-only pages and the device pages nothing locks, each
    node once, leaving out the target's own path."""
    wf, cache, planner = make()
    wf.register("w", WorkflowGraph(CHAIN.agents, repeat=True))
    system = toks(9, 2)
    nodes = {a: run_agent(wf, cache, planner, "w", a, toks(i, 3, system))
             for i, a in enumerate(["planner", "coder", "reviewer"])}
    other = insert(cache, toks(7, 1), "x")
    due = planner.due_targets("w")
    assert [(t.agent_id, t.node) for t in due] == [(a, nodes[a]) for a in ("planner", "coder", "reviewer")]
    assert planner.targets("w", due=due) == [], "nothing is on the host only"
    siblings = [nodes["coder"], nodes["reviewer"]]
    assert due_footprint(nodes["planner"], siblings, PS) == 6, "the shared system prompt is the target's"
    assert due_footprint(other, siblings, PS) == 8, "the shared system prompt once"
    assert due_footprint(nodes["coder"], [nodes["coder"]], PS) == 0
    cache.lock(nodes["coder"])
    assert due_footprint(other, siblings, PS) == 3, "a locked path is held already"
    cache.unlock(nodes["coder"])
    cache.evict_device(cache.device_pool.num_used)
    assert all(host_only_pages(n) for n in nodes.values())
    assert due_footprint(other, siblings, PS) == 8, "host-only pages count as well"
    cache.evict_host(cache.host_pool.num_used)
    assert due_footprint(other, siblings, PS) == 0, "nodes gone from the tree count nothing"


def test_a_new_instance_falls_back_to_the_agents_top_level_prefix():
    wf, cache, planner = make()
    wf.register("w1", CHAIN)
    system = toks(9, 2)
    mine = run_agent(wf, cache, planner, "w1", "planner", toks(1, 3, system))
    run_agent(wf, cache, planner, "w1", "coder", toks(2, 3, system))  # splits off the shared prefix
    cache.evict_device(cache.device_pool.num_used)
    wf.register("w2", CHAIN)
    (target,) = planner.targets("w2", max_steps=0)
    assert target.agent_id == "planner" and target.node is mine.parent
    assert target.node.parent is cache.root and target.node.key == system
    assert planner.target_node("w1", "planner") is mine
    planner.forget("w1")
    assert planner.target_node("w1", "planner") is mine.parent


def test_agents_sharing_a_node_get_one_target_and_dead_nodes_none():
    wf, cache, planner = make()
    wf.register("w", WorkflowGraph([AgentSpec("a"), AgentSpec("b")]))
    node = insert(cache, toks(1, 2), "a")
    planner.note_insert("w", "a", node)
    planner.note_insert("w", "b", node)
    cache.evict_device(cache.device_pool.num_used)
    assert [d.agent_id for d in planner.due_agents("w")] == ["a", "b"]
    (target,) = planner.targets("w")
    assert target.agent_id == "a" and target.node is node
    cache.evict_host(cache.host_pool.num_used)  # the node is gone from both tiers
    assert planner.target_node("w", "a") is None and planner.targets("w") == []


def test_dynamic_workflows_use_the_predictor_only_when_enabled():
    wf, cache, planner = make(load_ahead=2, min_prob=0.5)
    for i in range(6):  # the predictor learns: after "search" comes "summarize"
        for agent in ("search", "summarize"):
            wf.on_request(f"train{i}", agent)
            wf.on_request_finished(f"train{i}", agent)
    node = run_agent(wf, cache, planner, "d1", "summarize", toks(1, 2))
    wf.on_request("d1", "search")
    due = planner.due_agents("d1")
    assert due and due[0].agent_id == "summarize" and due[0].steps == 0.0 and due[0].prob >= 0.5
    cache.evict_device(cache.device_pool.num_used)
    (target,) = [t for t in planner.targets("d1") if t.agent_id == "summarize"]
    assert target.node is node
    assert planner.due_agents("d1", max_steps=0) == []
    off = PrefetchPlanner(wf, cache, PlannerConfig(use_predictor=False))
    assert off.due_agents("d1") == []


def test_bad_planner_config_names_the_field():
    with pytest.raises(ValueError, match="load_ahead_step"):
        PlannerConfig(load_ahead_step=-1)
    with pytest.raises(ValueError, match="min_prob"):
        PlannerConfig(min_prob=1.5)


def test_planner_imports_neither_torch_nor_the_engine():
    code = ("import sys; import context_forge.prefetch.planner; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('context_forge.engine')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_agent_expected_to_reset_gets_only_the_prefix_resets_kept():
    """A history compacted past a length (usage rule 6): the planner's target is the system prompt
    the next request will keep, not the history it will replace."""
    from context_forge.cache.radix import RadixTree
    from context_forge.workflow.scope import scope_key
    wf = LiveWorkflows()
    tree = RadixTree(PS)
    planner = PrefetchPlanner(wf, tree, PlannerConfig())
    system = toks(1, 4)
    key = scope_key("w", "coder")
    page = iter(range(10_000))

    def request(tokens: list[int]):
        tree.match(tokens, agent_id=key)
        return tree.insert(tokens, [next(page) for _ in range(len(tokens) // PS)], agent_id=key).node

    history: list[int] = []
    for turn in range(3):
        history += toks(10 + turn, 2)
        request(system + history)
    history = toks(20, 2)
    for turn in range(3):
        end = request(system + history)
        history += toks(21 + turn, 2)
    target = planner.target_node("w", "coder")
    assert end is not None and target is not None and target is not end
    depth, node = 0, target
    while node.parent is not None:
        depth += len(node.key)
        node = node.parent
    assert depth == len(system)


def test_a_target_leaves_out_the_larger_suffixes_recent_requests_dropped():
    """Eviction keeps rule 4's upper-quartile drop untagged; the planner also leaves out the rest
    of the largest recent drop (``drop_spread``), splitting the node the cut falls in, so a load
    does not bring pages the next request is likely to replace."""
    from context_forge.cache.radix import RadixTree
    from context_forge.workflow.scope import scope_key
    wf = LiveWorkflows()
    tree = RadixTree(PS)
    planner = PrefetchPlanner(wf, tree, PlannerConfig())
    key = scope_key("w", "coder")
    page = iter(range(10_000))

    def request(tokens: list[int]):
        tree.match(tokens, agent_id=key)
        return tree.insert(tokens, [next(page) for _ in range(len(tokens) // PS)], agent_id=key).node

    kept = toks(1, 20)
    for turn, tail_pages in enumerate((1, 1, 4, 1, 1)):
        request(kept + toks(50 + turn, tail_pages))  # the next request drops this tool result
        kept += toks(10 + turn, 3)
    end = request(kept + toks(60, 6))
    spread = tree.usage.drop_spread(key)
    assert spread >= PS and spread % PS == 0  # one drop of 4 pages among drops of one page

    def depth(node) -> int:
        n = 0
        while node.parent is not None:
            n += len(node.key)
            node = node.parent
        return n
    tagged = tree.usage.deepest(key)
    target = planner.target_node("w", "coder")
    assert tagged is not None and target is not None
    assert depth(tagged) < len(kept) + 6 * PS  # rule 4 untagged the expected drop
    assert depth(target) == depth(tagged) - spread  # split at a page boundary where needed
    node = end
    while node is not None and node is not target:
        node = node.parent
    assert node is target, "the target is on the request's path"


def test_an_agent_seen_in_one_workflow_gets_the_prefix_other_agents_shared_across_instances():
    """The first instance's whole path is all an agent seen once has; a next instance shares only
    its system prompt. Agents seen in two instances tell how long that shared prefix runs (the
    median, ``UsageIndex.first_share``), and the planner loads that much of the once-seen path."""
    from context_forge.cache.radix import RadixTree
    from context_forge.workflow.scope import scope_key
    wf = LiveWorkflows()
    tree = RadixTree(PS)
    planner = PrefetchPlanner(wf, tree, PlannerConfig())
    page = iter(range(10_000))
    system = {a: toks(seed, 4) for seed, a in enumerate(("planner", "coder", "reviewer"), start=1)}

    def request(w: str, agent: str, task_seed: int):
        tokens = system[agent] + toks(task_seed, 6)
        key = scope_key(w, agent)
        tree.match(tokens, agent_id=key)
        return tree.insert(tokens, [next(page) for _ in range(len(tokens) // PS)], agent_id=key).node

    for agent, seed in (("planner", 10), ("coder", 11), ("reviewer", 12)):
        request("w1", agent, seed)
    tree.usage.forget_workflow("w1")
    assert tree.usage.first_share("reviewer") is None  # no agent seen twice yet
    for agent, seed in (("planner", 20), ("coder", 21)):
        request("w2", agent, seed)
    assert tree.usage.first_share("reviewer") == 4 * PS
    assert tree.usage.first_share("coder") is None  # it has its own evidence
    target = planner.target_node("w3", "reviewer")
    assert target is not None and target.parent is tree.root
    assert list(target.key) == system["reviewer"]


def test_without_drop_evidence_a_target_is_the_prefix_shared_across_instances():
    """Before any next request has shown how much of a path it keeps, the planner loads only the
    part of the agent's path its bare key tags (shared across instances); once rule 4 has two
    observations, the whole path (less the drop spread)."""
    from context_forge.cache.radix import RadixTree
    from context_forge.workflow.scope import scope_key
    wf = LiveWorkflows()
    tree = RadixTree(PS)
    planner = PrefetchPlanner(wf, tree, PlannerConfig())
    page = iter(range(10_000))
    system = toks(1, 4)

    def request(w: str, tokens: list[int]):
        key = scope_key(w, "coder")
        tree.match(tokens, agent_id=key)
        return tree.insert(tokens, [next(page) for _ in range(len(tokens) // PS)], agent_id=key).node

    request("w1", system + toks(10, 6))
    end = request("w2", system + toks(20, 6))
    assert not tree.usage.has_drop_evidence("coder")
    target = planner.target_node("w2", "coder")
    assert target is not None and target is not end and "coder" in target.agents
    assert target.parent is tree.root and list(target.key) == system
    history = system + toks(20, 6)
    for turn in range(2):
        history += toks(30 + turn, 2)
        end = request("w2", history)
    assert tree.usage.has_drop_evidence("coder")
    assert planner.target_node("w2", "coder") is end


def _route_then_guesses(come_true: bool) -> tuple[LiveWorkflows, RadixCache, PrefetchPlanner]:
    """Dynamic workflows A -> router -> x and B -> hub -> y, ten each; then twenty that reach hub
    from contexts never seen before, where the first-order guess (y) comes true or each calls a
    new agent instead."""
    wf, cache, planner = make(load_ahead=1, min_prob=0.6)
    for i in range(10):
        for agent in ("A", "router", "x"):
            wf.on_request(f"a{i}", agent)
            wf.on_request_finished(f"a{i}", agent)
        for agent in ("B", "hub", "y"):
            wf.on_request(f"b{i}", agent)
            wf.on_request_finished(f"b{i}", agent)
    for i in range(20):
        for agent in (f"caller{i}", "hub", "y" if come_true else f"new{i}"):
            wf.on_request(f"c{i}", agent)
            wf.on_request_finished(f"c{i}", agent)
    return wf, cache, planner


@pytest.mark.parametrize("come_true", [True, False])
def test_a_guess_from_an_unseen_context_is_planned_only_while_such_guesses_come_true(come_true: bool):
    wf, cache, planner = _route_then_guesses(come_true)
    for agent in ("caller-new", "router"):  # context (caller-new, router) was never seen
        wf.on_request("probe", agent)
    p_x = wf.predictor.prob_within("probe", 1)["x"]
    assert p_x > 0.7  # above min_prob either way
    due = [d.agent_id for d in planner.due_agents("probe")]
    if come_true:
        assert due == ["x"]
    else:
        assert due == []  # guesses from never-seen contexts kept failing (on hub)
        assert wf.predictor.trust("probe") * p_x < 0.6
    wf.on_request("known", "A")
    wf.on_request("known", "router")  # the well-seen context (A, router) is planned either way
    assert [d.agent_id for d in planner.due_agents("known")] == ["x"]


def test_declared_workflows_calls_are_not_scored_for_trust():
    """A declared instance is planned from its graph, so its calls (parallel branches interleave in
    any order) say nothing of how far the predictor's guesses can be trusted."""
    wf = LiveWorkflows()
    for agent in ("triage", "billing"):
        wf.on_request("probe", agent)
    before = wf.predictor.trust("probe")
    for i in range(5):
        wf.register(f"team{i}", CHAIN)
        for agent in ("planner", "coder", "reviewer"):
            wf.on_request(f"team{i}", agent)
            wf.on_request_finished(f"team{i}", agent)
        wf.finish(f"team{i}")
    assert wf.predictor.trust("probe") == before


def test_a_repeat_instances_next_round_is_unsure_until_a_repeat_instance_has_ended():
    """Until one repeat instance ends, nothing says an instance loops again: the agents due only
    through a next round get UNPROVEN_ROUND_PROB, those of the current round 1; after an instance
    ended after one round, the rounds model decides, and whatever stays due is sure again."""
    from context_forge.prefetch.planner import UNPROVEN_ROUND_PROB

    wf, _, planner = make(load_ahead=2)
    loop = WorkflowGraph(CHAIN.agents, repeat=True)
    wf.register("w1", loop)
    for agent in ("planner", "coder"):
        wf.on_request("w1", agent)
        wf.on_request_finished("w1", agent)
    due = {d.agent_id: d for d in planner.due_agents("w1")}
    assert due["reviewer"] == DueAgent("reviewer", 0.0, 1.0)
    assert due["planner"] == DueAgent("planner", 1.0, UNPROVEN_ROUND_PROB)
    assert due["coder"] == DueAgent("coder", 2.0, UNPROVEN_ROUND_PROB)
    wf.on_request("w1", "reviewer")
    wf.on_request_finished("w1", "reviewer")
    wf.finish("w1")
    assert wf.rounds.known()
    wf.register("w2", loop)
    for agent in ("planner", "coder"):
        wf.on_request("w2", agent)
        wf.on_request_finished("w2", agent)
    assert planner.due_agents("w2") == [DueAgent("reviewer", 0.0, 1.0)]
    wf.register("w3", WorkflowGraph(CHAIN.agents, repeat=True))
    wf.on_request("w3", "planner")
    assert all(d.prob == 1.0 for d in planner.due_agents("w3"))
