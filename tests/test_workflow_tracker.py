"""StepTracker: steps-to-execution on chains, diamonds, optional agents, concurrent and repeat
instances, and incremental updates checked against a from-scratch recomputation."""
from __future__ import annotations

import math

import pytest
from context_forge.workflow import (
    AgentSpec,
    DuplicateWorkflowError,
    StepTracker,
    UnknownAgentError,
    UnknownWorkflowError,
    WorkflowError,
    WorkflowGraph,
)
from hypothesis import given, settings
from hypothesis import strategies as st

CHAIN = WorkflowGraph([AgentSpec("P"), AgentSpec("E", ("P",)), AgentSpec("X", ("E",)),
                       AgentSpec("R", ("X",))])
PEER = WorkflowGraph(CHAIN.agents, repeat=True)
DIAMOND = WorkflowGraph([AgentSpec("a"), AgentSpec("b", ("a",)), AgentSpec("c", ("a",)),
                         AgentSpec("long", ("c",)), AgentSpec("d", ("b", "long"))])


def all_steps(t: StepTracker, agents) -> dict[str, float]:
    return {a: t.steps(a) for a in agents}


def run(t: StepTracker, instance: str, *agents: str) -> None:
    for a in agents:
        t.agent_started(instance, a)
        t.agent_finished(instance, a)


def test_chain_steps_and_running_agents() -> None:
    t = StepTracker()
    t.register("w", CHAIN)
    assert all_steps(t, "PEXR") == {"P": 0, "E": 1, "X": 2, "R": 3}
    t.agent_started("w", "P")
    assert all_steps(t, "PEXR") == {"P": 0, "E": 1, "X": 2, "R": 3}
    t.agent_finished("w", "P")
    assert all_steps(t, "PEXR") == {"P": math.inf, "E": 0, "X": 1, "R": 2}
    run(t, "w", "E", "X", "R")
    assert all_steps(t, "PEXR") == dict.fromkeys("PEXR", math.inf)
    assert t.steps("never-declared") == math.inf


def test_diamond_uses_longest_path() -> None:
    t = StepTracker()
    t.register("w", DIAMOND)
    assert all_steps(t, ["a", "b", "c", "long", "d"]) == {"a": 0, "b": 1, "c": 1, "long": 2, "d": 3}
    run(t, "w", "a", "b")
    assert t.steps("d") == 2  # still waits for c -> long
    run(t, "w", "c")
    assert t.steps("d") == 1 and t.steps("long") == 0


def test_optional_agents_count_and_are_marked() -> None:
    g = WorkflowGraph([AgentSpec("plan"), AgentSpec("review", ("plan",), optional=True)])
    plain = WorkflowGraph([AgentSpec("review")])
    t = StepTracker()
    t.register("w1", g)
    assert t.steps("review") == 1 and t.is_optional("review") and not t.is_optional("plan")
    t.register("w2", plain)
    assert t.steps("review") == 0 and not t.is_optional("review")
    t.finish("w2")
    assert t.is_optional("review")
    t.finish("w1")
    assert not t.is_optional("review") and t.steps("review") == math.inf


def test_concurrent_instances_take_the_minimum_and_finished_instances_stop_counting() -> None:
    t = StepTracker()
    t.register("w1", CHAIN)
    t.register("w2", CHAIN)
    run(t, "w1", "P", "E")
    assert all_steps(t, "PEXR") == {"P": 0, "E": 1, "X": 0, "R": 1}
    t.finish("w2")
    assert all_steps(t, "PEXR") == {"P": math.inf, "E": math.inf, "X": 0, "R": 1}
    assert t.live_instances() == ["w1"]
    assert "w2" not in t and len(t) == 1
    with pytest.raises(UnknownWorkflowError):
        t.agent_started("w2", "P")


def test_repeat_rounds() -> None:
    t = StepTracker()
    t.register("peer", PEER)
    assert all_steps(t, "PEXR") == {"P": 0, "E": 1, "X": 2, "R": 3}
    run(t, "peer", "P")
    assert all_steps(t, "PEXR") == {"P": 3, "E": 0, "X": 1, "R": 2}
    run(t, "peer", "E")
    assert all_steps(t, "PEXR") == {"P": 2, "E": 3, "X": 0, "R": 1}
    t.agent_started("peer", "X")
    run(t, "peer", "R")  # reported out of order: round still waits for X
    assert all_steps(t, "PEXR") == {"P": 1, "E": 2, "X": 0, "R": 4}
    t.agent_finished("peer", "X")
    assert t.completed_rounds("peer") == 1
    assert all_steps(t, "PEXR") == {"P": 0, "E": 1, "X": 2, "R": 3}


def test_repeat_round_restarts_when_a_done_agent_starts_again() -> None:
    g = WorkflowGraph([AgentSpec("plan"), AgentSpec("act", ("plan",)),
                       AgentSpec("check", ("act",), optional=True)], repeat=True)
    t = StepTracker()
    t.register("w", g)
    run(t, "w", "plan", "act")
    t.agent_started("w", "plan")  # check was skipped
    assert t.completed_rounds("w") == 1
    assert all_steps(t, ["plan", "act", "check"]) == {"plan": 0, "act": 1, "check": 2}


def test_plain_graph_rerun_and_parallel_requests_of_one_agent() -> None:
    t = StepTracker()
    t.register("w", CHAIN)
    run(t, "w", "P", "E")
    t.agent_started("w", "E")  # a retry of E
    assert t.steps("E") == 0 and t.steps("X") == 1
    t.agent_finished("w", "E")
    t.agent_started("w", "X")
    t.agent_started("w", "X")
    t.agent_finished("w", "X")
    assert t.steps("X") == 0 and t.steps("R") == 1
    t.agent_finished("w", "X")
    assert t.steps("X") == math.inf and t.steps("R") == 0
    t.agent_finished("w", "X")  # finishing a done agent again changes nothing
    assert t.instance_steps("w", "R") == 0


def test_errors_name_what_was_wrong() -> None:
    t = StepTracker()
    t.register("w", CHAIN)
    with pytest.raises(UnknownAgentError, match="'Z'.*'w'"):
        t.agent_started("w", "Z")
    with pytest.raises(UnknownWorkflowError, match="'nope'") as err:
        t.agent_finished("nope", "P")
    assert isinstance(err.value, KeyError) and isinstance(err.value, WorkflowError)
    with pytest.raises(DuplicateWorkflowError, match="'w'"):
        t.register("w", CHAIN)
    with pytest.raises(WorkflowError, match="instance_id"):
        t.register("", CHAIN)
    with pytest.raises(TypeError, match="WorkflowGraph"):
        t.register("x", {"agents": []})  # type: ignore[arg-type]
    with pytest.raises(UnknownWorkflowError):
        t.finish("nope")


def test_change_feed_reports_changed_agents_per_subscriber() -> None:
    t = StepTracker()
    f1, f2 = t.subscribe(), t.subscribe()
    t.register("w", CHAIN)
    assert f1.drain() == set("PEXR")
    assert f1.drain() == set()
    run(t, "w", "P")
    assert f1.drain() == set("PEXR")
    t.register("w2", CHAIN)
    assert f1.drain() == {"P"}  # E, X, R keep their minimum (w is ahead)
    assert f2.drain() == set("PEXR")
    f2.close()
    run(t, "w2", "P")
    assert f2.drain() == set()


# ---- incremental vs from scratch ------------------------------------------------------------


def scratch_values(g: WorkflowGraph, done: set[str], running: set[str]) -> dict[str, int]:
    """Direct recursive definition of one instance's steps (the documented semantics)."""

    def pending(a: str) -> int:
        if a in running:
            return 0
        unfinished = [d for d in g.depends_on(a) if d not in done]
        return 1 + max(pending(d) for d in unfinished) if unfinished else 0

    values = {a: pending(a) for a in g if a not in done}
    if g.repeat and done:
        remaining = 1 + max(values.values())
        values.update({a: remaining + g.depth(a) for a in done})
    return values


@st.composite
def random_graph(draw: st.DrawFn) -> WorkflowGraph:
    n = draw(st.integers(1, 7))
    names = [f"g{i}" for i in range(n)]
    specs = [
        AgentSpec(names[i], tuple(draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else ()),
                  optional=draw(st.booleans()))
        for i in range(n)
    ]
    return WorkflowGraph(draw(st.permutations(specs)), repeat=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(st.lists(random_graph(), min_size=1, max_size=3), st.data())
def test_incremental_matches_from_scratch(graphs: list[WorkflowGraph], data: st.DataObject) -> None:
    t = StepTracker()
    feed = t.subscribe()
    agents = sorted({a for g in graphs for a in g})
    live: dict[str, tuple[WorkflowGraph, set[str], set[str]]] = {}
    next_id = 0
    for _ in range(data.draw(st.integers(1, 40))):
        before = all_steps(t, agents)
        kind = data.draw(st.sampled_from(["register", "start", "finish", "end"]))
        if kind == "register" or not live:
            g = data.draw(st.sampled_from(graphs))
            live[f"i{next_id}"] = (g, set(), set())
            t.register(f"i{next_id}", g)
            next_id += 1
        else:
            iid = data.draw(st.sampled_from(sorted(live)))
            g, done, running = live[iid]
            if kind == "end":
                del live[iid]
                t.finish(iid)
            elif kind == "start" and len(running) < len(g):
                agent = data.draw(st.sampled_from([a for a in g.order if a not in running]))
                if agent in done and g.repeat:
                    done.clear()
                done.discard(agent)
                running.add(agent)
                t.agent_started(iid, agent)
            elif kind == "finish" and running:
                agent = data.draw(st.sampled_from(sorted(running)))
                running.discard(agent)
                done.add(agent)
                if g.repeat and len(done) == len(g):
                    done.clear()
                t.agent_finished(iid, agent)
        expected = dict.fromkeys(agents, math.inf)
        optional_everywhere = dict.fromkeys(agents, True)
        for iid, (g, done, running) in live.items():
            for a, v in scratch_values(g, done, running).items():
                assert t.instance_steps(iid, a) == v
                expected[a] = min(expected[a], v)
                optional_everywhere[a] &= g.is_optional(a)
        after = all_steps(t, agents)
        assert after == expected
        assert {a for a in agents if t.is_optional(a)} == {
            a for a in agents if optional_everywhere[a] and expected[a] < math.inf
        }
        assert feed.drain() == {a for a in agents if before[a] != after[a]}


def instance_state(t: StepTracker, instance: str) -> tuple[dict[str, float], int, int]:
    agents = t.graph_of(instance).agent_ids
    return ({a: t.instance_steps(instance, a) for a in agents}, t.completed_rounds(instance),
            t.rounds_started(instance))


def test_report_finished_is_idempotent_in_a_plain_graph() -> None:
    t = StepTracker()
    t.register("w", CHAIN)
    run(t, "w", "P")
    before = instance_state(t, "w")
    assert "already finished" in (t.report_finished("w", "P") or "")
    assert instance_state(t, "w") == before
    t.agent_started("w", "E")
    assert "running" in (t.report_finished("w", "E") or "")
    assert instance_state(t, "w")[0]["E"] == 0
    t.agent_finished("w", "E")
    assert t.report_finished("w", "X") is None  # X made no request: the report applies once
    after = instance_state(t, "w")
    assert after[0]["R"] == 0
    assert t.report_finished("w", "X") is not None and instance_state(t, "w") == after


def test_report_that_completed_a_round_is_not_applied_to_the_next_round() -> None:
    t = StepTracker()
    t.register("w", PEER)
    run(t, "w", "P", "E", "X")
    assert t.report_finished("w", "R") is None  # the skip completes round 1
    new_round = instance_state(t, "w")
    assert new_round[1] == 1 and new_round[0]["P"] == 0
    assert "next round" in (t.report_finished("w", "R") or "")
    assert instance_state(t, "w") == new_round
    run(t, "w", "P", "E", "X")  # round 2 under way: skipping R is a new report
    assert t.report_finished("w", "R") is None and t.completed_rounds("w") == 2


def test_report_in_a_last_round_changes_nothing_twice() -> None:
    t = StepTracker()
    t.register("w", PEER)
    run(t, "w", "P", "E", "X")
    t.set_last_round("w")
    assert t.report_finished("w", "R") is None
    done = instance_state(t, "w")
    assert done == (dict.fromkeys("PEXR", math.inf), 0, 1)
    for agent in "PEXR":
        assert t.report_finished("w", agent) is not None
    assert instance_state(t, "w") == done
