"""Recurrence (next use of an agent by a workflow not live yet) and the rounds model."""
from __future__ import annotations

import math

from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.recurrence import GRID, Recurrence, quantize
from context_forge.workflow.rounds import RoundsModel


def feed(model: Recurrence, calls: list[tuple[str, str]]) -> None:
    for workflow, agent in calls:
        model.observe(workflow, agent)


def stream(instances: int, agents: tuple[str, ...] = ("planner", "coder", "critic")) -> list[tuple[str, str]]:
    return [(f"w{i}", a) for i in range(instances) for a in agents]


def test_quantize_is_exact_below_one_and_geometric_above() -> None:
    assert quantize(0.0) == 0.0 and quantize(0.5) == 0.5 and quantize(math.inf) == math.inf
    for value in (1.0, 3.0, 17.0, 1000.0):
        q = quantize(value)
        assert q / GRID ** 0.5 <= value <= q * GRID ** 0.5 + 1e-9
    assert quantize(10.0) == quantize(10.1)


def test_agent_of_one_workflow_is_not_expected_until_some_agent_recurs() -> None:
    model = Recurrence()
    feed(model, [("w0", "planner"), ("w0", "coder")])
    assert model.future_steps("planner") == math.inf
    assert model.future_steps("unknown") == math.inf
    assert math.isnan(model.gap("planner"))


def test_template_agents_are_expected_one_gap_after_the_latest_instance() -> None:
    model = Recurrence()
    feed(model, stream(6))
    assert model.gap("planner") == 3.0
    near = model.future_steps("planner")
    assert 0 < near < math.inf
    # The critic runs at a later position of every instance than the planner.
    model2 = Recurrence()
    feed(model2, stream(6) + [("w6", "planner")])
    assert model2.future_steps("critic") >= model2.future_steps("coder")


def test_silence_pushes_an_agent_away() -> None:
    model = Recurrence()
    feed(model, stream(6))
    before = model.future_steps("critic")
    feed(model, [(f"other{i}", "solo") for i in range(200)])
    assert model.future_steps("critic") > before


def test_newcomer_borrows_the_population_gap_scaled_by_how_many_recur() -> None:
    model = Recurrence()
    feed(model, stream(4))
    model.observe("w9", "newcomer")
    newcomer = model.future_steps("newcomer")
    assert math.isfinite(newcomer)
    assert newcomer > model.future_steps("planner")
    # More agents that never recur: a newcomer is expected later.
    crowded = Recurrence()
    feed(crowded, stream(4) + [(f"x{i}", f"one-off-{i}") for i in range(30)])
    crowded.observe("w9", "newcomer")
    assert crowded.future_steps("newcomer") > newcomer


def test_changes_are_published_to_subscribers() -> None:
    model = Recurrence()
    feed_ = model.subscribe()
    feed(model, stream(3))
    assert "planner" in feed_.drain()


def test_within_one_workflow_an_agent_recurs_by_its_own_calls() -> None:
    model = Recurrence()
    feed(model, [("sim", a) for _ in range(5) for a in ("a", "b", "c")])
    within = model.within_steps("sim", "a")
    assert 0 < within < math.inf
    assert model.within_steps("sim", "never") == math.inf
    model.finish("sim")
    assert model.within_steps("sim", "a") == math.inf


def test_same_order_same_values() -> None:
    """The clock counts request starts only, so two replicas fed the same order agree."""
    calls = stream(5) + [("w7", "planner"), ("w5", "critic")]
    one, two = Recurrence(), Recurrence()
    feed(one, calls)
    feed(two, calls)
    for agent in ("planner", "coder", "critic"):
        assert one.future_steps(agent) == two.future_steps(agent)


def test_rounds_model_learns_when_repeat_instances_stop() -> None:
    chain = [AgentSpec("a"), AgentSpec("b", ("a",))]
    loop = WorkflowGraph(chain, repeat=True)
    model = RoundsModel()
    assert model.continues(loop, 3)  # nothing learned: keep looping
    for _ in range(3):
        model.record(loop, 2)
    assert model.continues(loop, 1)
    assert not model.continues(loop, 2)
    model.record(WorkflowGraph(chain), 5)  # not a loop: ignored
    assert not model.continues(loop, 2)
