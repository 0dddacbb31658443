"""WorkflowGraph: construction from data, validation errors, topological order and depths."""
from __future__ import annotations

import json

import pytest
from context_forge.workflow import (
    AgentSpec,
    CycleError,
    DuplicateAgentError,
    UnknownAgentError,
    UnknownDependencyError,
    WorkflowError,
    WorkflowGraph,
)
from hypothesis import given, settings
from hypothesis import strategies as st

TRACE_RECORD = {
    "type": "workflow",
    "workflow_id": "wf-3",
    "agents": [
        {"agent_id": "planner", "depends_on": []},
        {"agent_id": "coder", "depends_on": ["planner"]},
        {"agent_id": "tester", "depends_on": ["coder"]},
        {"agent_id": "reviewer", "depends_on": ["coder", "tester"], "optional": True},
    ],
}


def graph(*edges: tuple[str, list[str]], repeat: bool = False) -> WorkflowGraph:
    return WorkflowGraph([AgentSpec(a, tuple(d)) for a, d in edges], repeat=repeat)


def test_trace_workflow_record_is_accepted_with_extra_keys() -> None:
    g = WorkflowGraph.from_dict(TRACE_RECORD)
    assert g.order == ("planner", "coder", "tester", "reviewer")
    assert [g.depth(a) for a in g.order] == [0, 1, 2, 3]
    assert g.is_optional("reviewer") and not g.is_optional("coder")
    assert g.optional_agents == frozenset({"reviewer"})
    assert not g.repeat
    assert g.roots == ("planner",)
    assert WorkflowGraph.from_json(json.dumps(TRACE_RECORD)) == g


def test_yaml_json_and_files_agree(tmp_path) -> None:
    text = """
repeat: true
agents:
  - agent_id: planner
  - agent_id: executor
    depends_on: [planner]
  - {agent_id: expresser, depends_on: [executor]}
  - {agent_id: reviewer, depends_on: [expresser], optional: false}
"""
    g = WorkflowGraph.from_yaml(text)
    assert g.repeat and g.order == ("planner", "executor", "expresser", "reviewer")
    (tmp_path / "g.yaml").write_text(text)
    (tmp_path / "g.json").write_text(json.dumps(g.to_dict()))
    assert WorkflowGraph.from_file(tmp_path / "g.yaml") == g
    assert WorkflowGraph.from_file(str(tmp_path / "g.json")) == g
    assert WorkflowGraph.from_dict(g.to_dict()) == g


def test_diamond_order_depths_and_affected() -> None:
    g = graph(("d", ["b", "c"]), ("b", ["a"]), ("c", ["a"]), ("a", []), ("e", []))
    assert g.order == ("a", "b", "c", "d", "e")  # among ready agents, declaration order
    assert {a: g.depth(a) for a in g} == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 0}
    assert g.affected("a") == ("a", "b", "c", "d")
    assert g.affected("c") == ("c", "d")
    assert set(g.dependents("a")) == {"b", "c"}
    assert g.depends_on("d") == ("b", "c")
    assert len(g) == 5 and "e" in g and "z" not in g


def test_cycle_error_shows_path() -> None:
    with pytest.raises(CycleError) as err:
        WorkflowGraph.from_dict(
            {"agents": [{"agent_id": "planner", "depends_on": ["coder"]},
                        {"agent_id": "coder", "depends_on": ["planner"]}]}
        )
    assert str(err.value) == "dependency cycle: planner -> coder -> planner"
    assert err.value.cycle == ["planner", "coder", "planner"]
    assert isinstance(err.value, ValueError)


def test_longer_cycle_and_self_loop() -> None:
    with pytest.raises(CycleError, match="a -> b -> c -> a"):
        graph(("root", []), ("a", ["root", "c"]), ("b", ["a"]), ("c", ["b"]))
    with pytest.raises(CycleError, match="x -> x"):
        graph(("x", ["x"]))


def test_unknown_dependency_names_agent_and_dependency() -> None:
    with pytest.raises(UnknownDependencyError) as err:
        graph(("planner", []), ("tester", ["codr"]))
    assert "'tester'" in str(err.value) and "'codr'" in str(err.value)
    assert (err.value.agent_id, err.value.dependency) == ("tester", "codr")


def test_duplicate_agent() -> None:
    with pytest.raises(DuplicateAgentError, match="'coder'"):
        graph(("coder", []), ("coder", []))


def test_unknown_agent_query() -> None:
    g = graph(("a", []))
    with pytest.raises(UnknownAgentError, match="'zz'"):
        g.depth("zz")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"agent_id": "a"}], "must be a mapping"),
        ({"nodes": []}, "'agents' list"),
        ({"agents": {"a": {}}}, "'agents' must be a list"),
        ({"agents": []}, "at least one agent"),
        ({"agents": ["a"]}, r"agents\[0\] must be a mapping"),
        ({"agents": [{"depends_on": []}]}, r"agents\[0\] has no 'agent_id'"),
        ({"agents": [{"agent_id": 5}]}, r"agents\[0\].agent_id must be a non-empty string, got 5"),
        ({"agents": [{"agent_id": ""}]}, r"agents\[0\].agent_id must be a non-empty string"),
        ({"agents": [{"agent_id": "a"}, {"agent_id": "b", "depends_on": "a"}]},
         r"agents\[1\].depends_on \(agent 'b'\) must be a list of strings, got 'a'"),
        ({"agents": [{"agent_id": "b", "depends_on": [3]}]},
         r"agents\[0\].depends_on\[0\] \(agent 'b'\) must be a non-empty string, got 3"),
        ({"agents": [{"agent_id": "a", "optional": "yes"}]}, r"optional .* must be a boolean"),
        ({"agents": [{"agent_id": "a"}], "repeat": "no"}, "'repeat' must be a boolean"),
    ],
)
def test_bad_input_is_named(data: object, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        WorkflowGraph.from_dict(data)  # type: ignore[arg-type]


def test_agent_spec_validation_and_normalisation() -> None:
    spec = AgentSpec("b", ["a", "a", "c"])  # type: ignore[arg-type]
    assert spec.depends_on == ("a", "c")
    with pytest.raises(WorkflowError, match="list of strings"):
        AgentSpec("b", "a")  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="agent_id"):
        AgentSpec(None)  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="boolean"):
        AgentSpec("a", (), optional=1)  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="AgentSpec"):
        WorkflowGraph([{"agent_id": "a"}])  # type: ignore[list-item]


def test_parse_errors_are_workflow_errors(tmp_path) -> None:
    with pytest.raises(WorkflowError, match="invalid JSON"):
        WorkflowGraph.from_json("{agents: ")
    with pytest.raises(WorkflowError, match="invalid YAML"):
        WorkflowGraph.from_yaml("agents: [a, b")
    bad = tmp_path / "bad.yml"
    bad.write_text("agents:\n  - agent_id: a\n    depends_on: [b]\n")
    with pytest.raises(UnknownDependencyError) as err:
        WorkflowGraph.from_file(bad)
    assert any(str(bad) in note for note in err.value.__notes__)


@st.composite
def random_dags(draw: st.DrawFn) -> list[AgentSpec]:
    n = draw(st.integers(1, 12))
    names = [f"n{i}" for i in range(n)]
    specs = []
    for i in range(n):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        specs.append(AgentSpec(names[i], tuple(deps)))
    return draw(st.permutations(specs))


@settings(max_examples=80, deadline=None)
@given(random_dags())
def test_order_respects_dependencies_and_depth_is_longest_path(specs: list[AgentSpec]) -> None:
    g = WorkflowGraph(specs)
    pos = {a: i for i, a in enumerate(g.order)}
    assert sorted(g.order) == sorted(s.agent_id for s in specs)

    def longest(a: str) -> int:
        deps = g.depends_on(a)
        return 1 + max(longest(d) for d in deps) if deps else 0

    for s in specs:
        assert all(pos[d] < pos[s.agent_id] for d in s.depends_on)
        assert g.depth(s.agent_id) == longest(s.agent_id)
        for child in g.affected(s.agent_id)[1:]:
            assert pos[child] > pos[s.agent_id]
