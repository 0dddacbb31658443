"""Property tests of the agent-aware eviction order (kvflow, pbkv) over real workflow state.

Random declared workflows over a few shared agents, random requests (each cached as the engine
caches it: match, allocate, insert, the node locked while the request runs), agents finishing,
workflows finishing, and evictions, on a RadixCache with or without a host tier. At every device
eviction:

(a) the victim is in the lowest rank class among the evictable nodes at that moment (rank class =
    the first component of the policy key, ``-rank_level(node_priority)``, or
    ``-evict_pri_level`` for anonymous KV; evictable =
    ``RadixCache._device_candidate``: on the device, unlocked, not loading, no child on the device);
(b) a node that a live instance uses in its next step (an agent whose scoped priority is 0 or 1 in
    a live declared instance; the node on the path of that agent's latest prompt in the instance
    and tagged with its scoped key) is not the victim while an evictable node remains whose only
    users are finished workflows whose agents never run again in the trace.

After every operation the tree and pools are consistent (``RadixCache.check``: free + cached ==
total, as no request holds pages outside the tree here).

The victim also has the smallest full key (the LRU tie-break inside the class): the heap is exact.

A case is planned first (``plan``: which requests run, pure workflow bookkeeping), so the future
of the trace is known when (b) asks which agents run again. Planned traces are complete: an
instance runs every agent of its graph before it finishes, and the trace ends by completing the
instances still live, so what a declared graph says is due does run. Without that, (b) as stated
fails: ``test_truncated_trace_counterexample`` (xfail) is the minimal case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def path_tokens(node) -> list[int]:
    """Token ids from the root through the end of ``node``."""
    parts = []
    while node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return [t for part in reversed(parts) for t in part]

from context_forge.cache import CountingTransfer, PagePool, PolicyContext, RadixCache, RadixNode, build_policy
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.scope import scope_key

AGENTS = ("a0", "a1", "a2", "a3", "a4")
PS = 2
MAX_HISTORY = 24


# ------------------------------------------------------------------------------- case generation


@st.composite
def graphs(draw) -> WorkflowGraph:
    """A small DAG over a sample of the shared agents (each may depend on earlier ones)."""
    names = draw(st.lists(st.sampled_from(AGENTS), min_size=1, max_size=4, unique=True))
    specs = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), max_size=2, unique=True)) if i else []
        specs.append(AgentSpec(name, tuple(deps)))
    return WorkflowGraph(specs, repeat=draw(st.booleans()))


REQ = st.tuples(st.just("req"), st.integers(0, 5), st.integers(0, 3), st.integers(1, 6))
DONE = st.tuples(st.just("done"), st.integers(0, 5), st.integers(0, 3))
OPS = st.one_of(REQ, REQ, REQ, DONE, DONE, st.tuples(st.just("finish"), st.integers(0, 5)),
                st.tuples(st.just("evict"), st.integers(1, 6)))
"""Raw operations; `plan` maps their indices onto the case's instances, agents and running requests."""


@st.composite
def cases(draw) -> dict:
    n = draw(st.integers(1, 4))
    return {
        "policy": draw(st.sampled_from(["kvflow", "pbkv"])),
        "evict_pri_level": draw(st.sampled_from([1, 2, 4])),
        "device": draw(st.integers(8, 32)),
        "host": draw(st.sampled_from([0, 0, 16, 48])),
        "extend": draw(st.booleans()),
        "graphs": [draw(graphs()) for _ in range(n)],
        "ops": draw(st.lists(OPS, min_size=12, max_size=80)),
    }


def plan(case: dict) -> list[tuple]:
    """The concrete operations: ``("req", w, agent, n_input)``; ``("done", w, agent)`` (the raw op's
    last index picks one of the instance's running requests, oldest first); ``("finish", w)``
    (ends its running requests first); ``("evict", pages)``. Requests of finished instances or of
    agents already running in the instance are dropped, as are ``done`` ops of idle instances.

    Unless ``case["complete"]`` is False, instances complete: before a ``finish`` and, at the end
    of the trace, for every instance still live, its running requests end and each agent of its
    graph runs once more (in topological order). So the declared graphs tell the truth: an agent
    that a live instance's graph says is due does run again (see
    ``test_truncated_trace_counterexample`` for what (b) meets without this)."""
    graphs = case["graphs"]
    complete = case.get("complete", True)
    finished: set[int] = set()
    running: dict[int, list[str]] = {w: [] for w in range(len(graphs))}
    out: list[tuple] = []
    for op in case["ops"]:
        kind = op[0]
        if kind == "evict":
            out.append(op)
            continue
        w = op[1] % len(graphs)
        if w in finished:
            continue
        if kind == "finish":
            out += [("done", w, agent) for agent in running[w]]
            running[w] = []
            if complete:  # every agent of the graph runs before the instance ends
                for agent in graphs[w].order:
                    out += [("req", w, agent, 1), ("done", w, agent)]
            finished.add(w)
            out.append(("finish", w))
        elif kind == "req":
            agent = graphs[w].order[op[2] % len(graphs[w])]
            if agent not in running[w]:
                running[w].append(agent)
                out.append(("req", w, agent, op[3]))
        elif running[w]:
            out.append(("done", w, running[w].pop(op[2] % len(running[w]))))
    if complete:
        for w, graph in enumerate(graphs):
            if w in finished:
                continue
            out += [("done", w, agent) for agent in running[w]]
            for agent in graph.order:
                out += [("req", w, agent, 1), ("done", w, agent)]
            out.append(("finish", w))
    return out


# ------------------------------------------------------------------------------- the checked cache


@dataclass
class Harness:
    case: dict
    ops: list[tuple]
    step: int = 0
    evictions: int = 0
    protected_seen: int = 0
    """Evictions whose victim was protected by (b) (allowed only with no garbage left)."""
    protected_evictable: int = 0
    garbage_evictable: int = 0
    """Evictions at which some protected node / some garbage node was evictable (coverage)."""
    prompts: list[tuple[str, str, list[int]]] = field(default_factory=list)
    """(workflow, agent, page-aligned prompt tokens) of every request so far, in order."""
    latest: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    cache: RadixCache | None = None

    def future_agents(self) -> set[str]:
        return {op[2] for op in self.ops[self.step + 1:] if op[0] == "req"}


class CheckedCache(RadixCache):
    """A RadixCache that checks properties (a) and (b) before each device eviction."""

    harness: Harness
    live: LiveWorkflows

    def _evict_device_node(self, node: RadixNode) -> int:
        check_victim(self, node)
        return super()._evict_device_node(node)


def path_nodes(cache: RadixCache, tokens: list[int]) -> list[RadixNode]:
    """The nodes on the cached path of ``tokens`` (whole pages), without splitting anything."""
    ps = cache.page_size
    out: list[RadixNode] = []
    node, pos = cache.root, 0
    while pos + ps <= len(tokens):
        child = node.children.get(tuple(tokens[pos:pos + ps]))
        if child is None:
            break
        out.append(child)
        k = len(child.key)
        if tokens[pos:pos + k] != child.key:
            break
        node, pos = child, pos + k
    return out


def check_victim(cache: CheckedCache, victim: RadixNode) -> None:
    h, policy = cache.harness, cache.policy
    h.evictions += 1
    candidates = [n for n in cache.nodes() if cache._device_candidate(n)]
    assert victim in candidates, f"victim {victim!r} is not evictable"
    keys = {n: policy.key(n) for n in candidates}
    rank = {n: k[0] for n, k in keys.items()}
    lowest = min(rank.values())
    assert rank[victim] == lowest, (
        f"(a) victim {victim!r} tags {sorted(victim.agents)} rank class {rank[victim]}, but "
        + ", ".join(f"{n!r} tags {sorted(n.agents)} has {r}" for n, r in rank.items() if r < rank[victim]))
    # Stronger than (a): the heap is exact, so the LRU tie-break within the class holds too.
    assert keys[victim] == min(keys.values()), f"victim key {keys[victim]} above {min(keys.values())}"

    # (b) nodes the next step of a live instance uses, and evictable nodes nobody will use again
    steps = cache.live.scoped_graph_priority
    protected: set[RadixNode] = set()
    for (wf, agent), tokens in h.latest.items():
        if wf in h.finished:
            continue
        key = scope_key(wf, agent)
        if steps.priority(key) <= 1:
            protected.update(n for n in path_nodes(cache, tokens) if key in n.agents)
    again = h.future_agents()
    garbage = []
    for n in candidates:
        path = path_tokens(n)
        users = [(wf, agent) for wf, agent, tokens in h.prompts if tokens[:len(path)] == path]
        if users and all(wf in h.finished and agent not in again for wf, agent in users):
            garbage.append(n)
    h.protected_evictable += any(n in protected for n in candidates)
    h.garbage_evictable += bool(garbage)
    if victim not in protected:
        return
    h.protected_seen += 1
    assert not garbage, (
        f"(b) evicted {victim!r} (tags {sorted(victim.agents)}, rank class {rank[victim]}) needed by the next step "
        f"of a live instance while {', '.join(f'{n!r} tags {sorted(n.agents)} rank {rank[n]}' for n in garbage)} "
        "is only used by finished workflows whose agents never run again")


# ------------------------------------------------------------------------------- running a case


def run_case(case: dict) -> Harness:
    ops = plan(case)
    h = Harness(case, ops)
    live = LiveWorkflows()
    policy = build_policy(case["policy"], PolicyContext(workflows=live, evict_pri_level=case["evict_pri_level"]))
    cache = CheckedCache(PS, PagePool(case["device"], "device"),
                         PagePool(case["host"], "host") if case["host"] else None, policy, CountingTransfer())
    cache.harness, cache.live, h.cache = h, live, cache
    live.add_finish_listener(cache.forget_workflow)
    fresh = iter(range(10_000, 10**9))
    system = {a: [100 * (i + 1) + k for k in range(4)] for i, a in enumerate(AGENTS)}
    names = [f"w{i}" for i in range(len(case["graphs"]))]
    task = {wf: [next(fresh) for _ in range(2)] for wf in names}
    history: dict[str, list[int]] = {wf: [] for wf in names}
    registered: set[str] = set()
    held: dict[tuple[str, str], RadixNode | None] = {}
    for i, op in enumerate(ops):
        h.step = i
        kind = op[0]
        if kind == "evict":
            cache.evict_device(op[1])
        else:
            wf = names[op[1]]
            if wf not in registered:
                live.register(wf, case["graphs"][op[1]])
                registered.add(wf)
            if kind == "req":
                agent, n_input = op[2], op[3]
                live.on_request(wf, agent)
                new_input = [next(fresh) for _ in range(n_input)]
                if case["extend"]:  # the next prompt extends this one (the input joins the history)
                    history[wf] += new_input
                    tokens = system[agent] + task[wf] + history[wf]
                else:  # the next prompt drops this one's input
                    tokens = system[agent] + task[wf] + history[wf] + new_input
                tokens = tokens[:len(tokens) // PS * PS]
                h.latest[(wf, agent)] = tokens  # from now on its next step is this request
                h.prompts.append((wf, agent, tokens))
                held[(wf, agent)] = cache_request(cache, tokens, scope_key(wf, agent))
                history[wf] += [next(fresh) for _ in range(2)]  # the output
                if len(history[wf]) > MAX_HISTORY:  # compaction: a new, shorter history
                    history[wf] = [next(fresh) for _ in range(4)]
            elif kind == "done":
                node = held.pop((wf, op[2]))
                if node is not None:
                    cache.unlock(node)
                live.on_request_finished(wf, op[2])
            else:
                h.finished.add(wf)
                live.finish(wf)
        cache.check(external_device_pages=0)
    return h


def cache_request(cache: RadixCache, tokens: list[int], tag: str) -> RadixNode | None:
    """Cache a request's prompt as the engine does; the inserted node stays locked (the request
    runs) until ``done``. ``None`` when the device has no room even after eviction."""
    n = len(tokens) // cache.page_size
    m = cache.match(tokens, agent_id=tag)
    cache.lock(m.last_node)
    if m.host_len:
        cache.load_back(m.last_node)
        m = cache.match(tokens, touch=False)
    pages = cache.alloc_device(n - len(m.device_pages))
    if pages is None:
        cache.unlock(m.last_node)
        return None
    all_pages = m.device_pages + pages
    res = cache.insert(tokens, all_pages, tag)
    cache.lock(res.node)
    cache.unlock(m.last_node)
    cache.device_pool.free(res.redundant(all_pages))
    return res.node


# ------------------------------------------------------------------------------- tests


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_victims_are_lowest_ranked_and_spare_the_next_step(case: dict) -> None:
    run_case(case)


CHAIN = WorkflowGraph([AgentSpec("a0"), AgentSpec("a1", ("a0",)), AgentSpec("a2", ("a1",))])


def test_finished_workflow_goes_before_the_next_step() -> None:
    """A fixed case of (b): w0 finished and its agents never run again; w1 (a loop) has begun its
    next round, so its agents' latest prompts are due. A small device forces evictions: w0's KV
    goes first and w1's next step keeps its KV."""
    loop = WorkflowGraph([AgentSpec("a3"), AgentSpec("a4", ("a3",))], repeat=True)
    case = {"policy": "kvflow", "evict_pri_level": 4, "device": 40, "host": 0, "extend": True,
            "graphs": [CHAIN, loop], "ops": [], "complete": False}
    case["ops"] = [("req", 0, 0, 4), ("done", 0, 0), ("req", 0, 1, 4), ("done", 0, 1), ("finish", 0),
                   ("req", 1, 0, 4), ("done", 1, 0), ("req", 1, 1, 4), ("done", 1, 1), ("evict", 4)]
    ops = plan(case)
    assert ops[-1] == ("evict", 4)
    h = run_case(case)
    assert h.evictions > 0 and h.protected_seen == 0
    cache = h.cache
    assert cache is not None

    def on_device(key: tuple[str, str]) -> int:
        return sum(len(n.key) for n in path_nodes(cache, h.latest[key]) if n.device_pages is not None)

    assert on_device(("w1", "a3")) == len(h.latest[("w1", "a3")])
    assert on_device(("w1", "a4")) == len(h.latest[("w1", "a4")])
    assert on_device(("w0", "a0")) + on_device(("w0", "a1")) < len(h.latest[("w0", "a0")]) + len(h.latest[("w0", "a1")])


def test_plan_drops_impossible_requests_and_completes_instances() -> None:
    ops = [("done", 0, 0), ("req", 0, 0, 1), ("req", 0, 3, 1), ("req", 0, 1, 2), ("done", 0, 1), ("finish", 0),
           ("req", 0, 1, 1), ("evict", 3)]
    assert plan({"graphs": [CHAIN], "ops": ops, "complete": False}) == [
        ("req", 0, "a0", 1), ("req", 0, "a1", 2), ("done", 0, "a1"), ("done", 0, "a0"), ("finish", 0), ("evict", 3)]
    runs = [op for agent in CHAIN.order for op in (("req", 0, agent, 1), ("done", 0, agent))]
    assert plan({"graphs": [CHAIN], "ops": ops}) == [
        ("req", 0, "a0", 1), ("req", 0, "a1", 2), ("done", 0, "a1"), ("done", 0, "a0"), *runs, ("finish", 0),
        ("evict", 3)]
    assert plan({"graphs": [CHAIN], "ops": ops[:2]}) == [("req", 0, "a0", 1), ("done", 0, "a0"), *runs, ("finish", 0)]


@pytest.mark.xfail(strict=False, reason=(
    "(b) as literally stated needs the trace to run what the declared graphs say is due: here w1's "
    "a1 is due next but the trace ends first, and w0's finished a1 path, re-tagged with the bare key "
    "'a1' by UsageIndex.forget_workflow (working-tree change), ranks at a1's next call by any "
    "instance (0) above w1's next-round a0 (1); with the committed usage.py it is untagged and goes first"))
def test_truncated_trace_counterexample() -> None:
    """The minimal case hypothesis found (shrunk by hand) when instances may end, or the trace may
    stop, with declared agents still due (``complete`` False)."""
    w0 = WorkflowGraph([AgentSpec("a1")])
    w1 = WorkflowGraph([AgentSpec("a0"), AgentSpec("a1")], repeat=True)
    case = {"policy": "kvflow", "evict_pri_level": 4, "device": 8, "host": 0, "extend": True, "complete": False,
            "graphs": [w0, w1], "ops": [("req", 1, 0, 1), ("done", 1, 0), ("req", 0, 0, 1), ("finish", 0), ("evict", 1)]}
    run_case(case)


def test_rank_class_is_the_level() -> None:
    """The rank class used above: ``-rank_level(node_priority)`` (inf: no user expected), and
    ``-evict_pri_level`` for anonymous KV (no tagged request used it: `anonymous_key`)."""
    live = LiveWorkflows()
    policy = build_policy("kvflow", PolicyContext(workflows=live, evict_pri_level=4))
    live.register("w", CHAIN)
    node = RadixNode([1, 2], None)
    node.agents = {scope_key("w", "a1")}
    assert policy.key(node)[0] == -1.0
    node.agents = set()
    node.touched = True  # a tagged request used it, and the usage rules dropped its tags
    assert policy.key(node)[0] == -math.inf
    node.touched = False  # anonymous KV ranks at the farthest exact level
    assert policy.key(node)[0] == -4.0


def test_recurrence_guess_does_not_tie_a_live_next_step() -> None:
    """A case hypothesis found: a0 ran in two finished workflows, so its bare key ranks by a0's
    learned recurrence; that guess (one step) tied w1's declared next a2 and LRU order evicted
    w1's node. A workflow not live yet ranks at least ``NOT_LIVE_FLOOR`` steps away."""
    case = {"policy": "kvflow", "evict_pri_level": 1, "device": 8, "host": 0, "extend": False,
            "graphs": [WorkflowGraph([AgentSpec("a1")]),
                       WorkflowGraph([AgentSpec("a2"), AgentSpec("a1", ("a2",))], repeat=True),
                       WorkflowGraph([AgentSpec("a0")]), WorkflowGraph([AgentSpec("a0")])],
            "ops": [("finish", 0), ("req", 1, 0, 1), ("finish", 0), ("finish", 2), ("req", 0, 0, 1),
                    ("done", 0, 0), ("done", 1, 0), ("finish", 0), ("finish", 0), ("finish", 3),
                    ("done", 0, 0), ("evict", 3)]}
    run_case(case)
