"""Agent priorities and the LiveWorkflows façade; min-multisets and rate sums checked against brute force."""
from __future__ import annotations

import math

import pytest
from context_forge.workflow import (
    AgentSpec,
    BlendedPriority,
    LiveWorkflows,
    MarkovPredictor,
    UnknownAgentError,
    UnknownWorkflowError,
    WorkflowError,
    WorkflowGraph,
)
from context_forge.workflow.minmap import AgentRateSum, CountedMin, KeyedMin
from hypothesis import given, settings
from hypothesis import strategies as st

CHAIN = WorkflowGraph([AgentSpec("plan"), AgentSpec("code", ("plan",)), AgentSpec("test", ("code",))])


def trained_predictor() -> MarkovPredictor:
    p = MarkovPredictor(smoothing=0.01)
    for _ in range(10):
        p.observe_sequence(["plan", "search", "code", "test"])
    return p


def test_graph_priority_follows_the_tracker() -> None:
    live = LiveWorkflows()
    live.register("s", CHAIN)
    g = live.priority("graph")
    assert g is live.graph_priority
    assert [g.priority(a) for a in ["plan", "code", "test"]] == [0, 1, 2]
    live.on_request("s", "plan")
    live.on_request_finished("s", "plan")
    assert [g.priority(a) for a in ["plan", "code", "test"]] == [math.inf, 0, 1]
    assert live.predictor.vocabulary == ("plan",)  # static requests teach the predictor too
    live.finish("s")
    assert g.priority("code") == math.inf and live.live_workflows() == []


def test_predictor_priority_follows_the_dynamic_workflows() -> None:
    live = LiveWorkflows(predictor=trained_predictor(), horizon=8)
    q = live.predictor_priority
    assert q.priority("code") == math.inf
    live.on_request("d1", "plan")
    assert live.is_dynamic("d1")
    assert q.priority("plan") == 0.0  # running
    assert q.priority("search") == pytest.approx(0.0, abs=0.05)
    assert q.priority("code") == pytest.approx(1.0, abs=0.05)
    live.on_request_finished("d1", "plan")
    assert q.priority("plan") > 3.0
    live.on_request("d2", "plan")
    live.on_request_finished("d2", "plan")
    live.on_request("d2", "search")
    live.on_request_finished("d2", "search")
    assert q.priority("code") == pytest.approx(0.0, abs=0.05)  # d2 is one step ahead of d1
    live.finish("d2")
    assert q.priority("code") == pytest.approx(1.0, abs=0.05)
    live.finish("d1")
    assert all(q.priority(a) == math.inf for a in ["plan", "search", "code", "test"])
    assert q.workflows() == []


def test_predictor_priority_adds_the_workflows_rates_weighted_by_trust() -> None:
    """Two tickets that may each call an agent bring it nearer than one; a ticket whose context's
    predictions have not come true (low trust) counts less than a trusted one."""
    live = LiveWorkflows(predictor=trained_predictor(), horizon=8)
    q = live.predictor_priority
    for wf in ("d1", "d2"):
        live.on_request(wf, "plan")
        live.on_request_finished(wf, "plan")
    v = live.predictor.reach_steps_all("d1", 8)["test"]
    assert v > 1.0
    trust = live.predictor.trust("d1")
    two = 1.0 / (2 * trust / (v + 1.0)) - 1.0
    assert q.priority("test") == pytest.approx(two, rel=0.2)
    live.finish("d2")
    one = (v + 1.0) / trust - 1.0
    assert q.priority("test") == pytest.approx(one, rel=0.2) and q.priority("test") > two
    doubtful = MarkovPredictor(smoothing=0.01)
    for _ in range(10):
        doubtful.observe_sequence(["plan", "search", "code", "test"])
    for i in range(30):  # calls from a well-seen context that the model did not expect
        doubtful.observe(f"miss{i}", "plan")
        doubtful.observe(f"miss{i}", f"other{i}")
    low = LiveWorkflows(predictor=doubtful, horizon=8)
    low.on_request("t", "plan")
    low.on_request_finished("t", "plan")
    low.on_request("t", "search")
    low.on_request_finished("t", "search")
    assert low.predictor.trust("t") < 0.5
    steps = low.predictor.reach_steps_all("t", 8)["code"]
    assert low.predictor_priority.priority("code") == pytest.approx(
        (steps + 1.0) / low.predictor.trust("t") - 1.0, rel=0.2)
    assert low.predictor_priority.priority("code") > steps + 1.0


def test_blended_formula() -> None:
    live = LiveWorkflows(predictor=trained_predictor(), weight=0.6)
    live.register("s", CHAIN)
    live.on_request("d", "plan")
    live.on_request_finished("d", "plan")
    g, q, b = live.graph_priority, live.predictor_priority, live.priority("blended")
    for agent in ["plan", "code", "test"]:  # both finite
        assert b.priority(agent) == pytest.approx(0.6 * g.priority(agent) + 0.4 * q.priority(agent))
    assert g.priority("search") == math.inf
    assert b.priority("search") == q.priority("search")  # predictor only
    live.finish("d")
    assert b.priority("code") == g.priority("code") == 1  # graph only
    assert b.priority("nobody") == math.inf
    weighted = BlendedPriority(g, q, weight=1)
    live.on_request("d3", "plan")
    assert weighted.priority("test") == g.priority("test")


def test_change_feeds_report_changed_agents() -> None:
    live = LiveWorkflows(predictor=trained_predictor())
    graph_feed = live.graph_priority.subscribe()
    pred_feed = live.predictor_priority.subscribe()
    blend_feed = live.blended_priority.subscribe()
    live.register("s", CHAIN)
    assert graph_feed.drain() == {"plan", "code", "test"}
    assert pred_feed.drain() == set()
    assert blend_feed.drain() == {"plan", "code", "test"}
    assert blend_feed.drain() == set()
    live.on_request("d", "search")
    changed = pred_feed.drain()
    assert changed == {"plan", "search", "code", "test"}
    assert blend_feed.drain() == changed
    assert graph_feed.drain() == set()
    live.on_request("s", "plan")
    assert graph_feed.drain() == set()  # plan was already at 0 steps
    live.on_request_finished("s", "plan")
    assert graph_feed.drain() == {"plan", "code", "test"}
    blend_feed.close()
    live.finish("d")
    assert blend_feed.drain() == set() and pred_feed.drain() == {"plan", "search", "code", "test"}


def test_live_workflows_errors() -> None:
    live = LiveWorkflows()
    live.register("s", CHAIN)
    with pytest.raises(UnknownAgentError, match="'deploy'"):
        live.on_request("s", "deploy")
    assert live.predictor.vocabulary == ()  # the bad report taught nothing
    live.on_request("d", "x")
    with pytest.raises(WorkflowError, match="already live as a dynamic workflow"):
        live.register("d", CHAIN)
    with pytest.raises(WorkflowError, match="no running request"):
        live.on_request_finished("d", "y")
    with pytest.raises(UnknownWorkflowError, match="'ghost'"):
        live.on_request_finished("ghost", "x")
    with pytest.raises(UnknownWorkflowError):
        live.finish("ghost")
    with pytest.raises(WorkflowError, match="unknown priority 'lru'"):
        live.priority("lru")
    with pytest.raises(WorkflowError, match="agent_id"):
        live.on_request("d", "")
    with pytest.raises(WorkflowError, match="weight"):
        LiveWorkflows(weight=1.5)
    with pytest.raises(WorkflowError, match="horizon"):
        LiveWorkflows(horizon=-1)


def test_parallel_requests_keep_a_dynamic_agent_running() -> None:
    live = LiveWorkflows(predictor=trained_predictor())
    live.on_request("d", "code")
    live.on_request("d", "code")
    live.on_request_finished("d", "code")
    assert live.predictor_priority.priority("code") == 0.0
    live.on_request_finished("d", "code")
    assert live.predictor_priority.priority("code") > 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from([None, 0.0, 1.5, 2.0, 7.25]))))
def test_keyed_min_matches_brute_force(ops: list[tuple[str, float | None]]) -> None:
    m = KeyedMin()
    truth: dict[str, float] = {}
    for key, value in ops:
        if value is None:
            m.discard(key)
            truth.pop(key, None)
        else:
            m.set(key, value)
            truth[key] = value
        assert m.min == min(truth.values(), default=math.inf)
        assert len(m) == len(truth)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from("wxyz"),
                          st.sampled_from([None, 0.1, 0.25, 0.5, math.inf]))))
def test_agent_rate_sum_matches_brute_force(ops: list[tuple[str, str, float | None]]) -> None:
    table = AgentRateSum()
    truth: dict[tuple[str, str], float] = {}
    for agent, owner, rate in ops:
        table.set(agent, owner, rate)
        if rate is None:
            truth.pop((agent, owner), None)
        else:
            truth[(agent, owner)] = rate
        for a in "ab":
            rates = [r for (x, _), r in truth.items() if x == a]
            assert table.total(a) == pytest.approx(sum(rates), abs=1e-9) if math.inf not in rates \
                else table.total(a) == math.inf


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5))))
def test_counted_min_matches_brute_force(ops: list[tuple[bool, int]]) -> None:
    m = CountedMin()
    truth: list[int] = []
    for add, value in ops:
        if add:
            m.add(value)
            truth.append(value)
        elif value in truth:
            m.remove(value)
            truth.remove(value)
        else:
            with pytest.raises(KeyError):
                m.remove(value)
        assert m.min == min(truth, default=math.inf) and m.size == len(truth)
