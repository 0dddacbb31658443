"""Declaring SScheduler workflows in Python, YAML and JSON, and the errors bad declarations raise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.workflow.errors import (
    CycleError,
    DuplicateAgentError,
    UnknownAgentError,
    UnknownDependencyError,
    WorkflowError,
)
from sscheduler import Agent, Workflow

YAML = """
name: coding
agents:
  - agent_id: planner
    system_prompt: You break the task into steps.
  - agent_id: coder
    system_prompt: You write the code.
    depends_on: [planner]
    max_tokens: 256
    temperature: 0.2
  - agent_id: reviewer
    depends_on: [coder]
    optional: true
"""


def test_python_and_yaml_declarations_agree() -> None:
    in_python = Workflow(
        "coding",
        [
            Agent("planner", "You break the task into steps."),
            Agent("coder", "You write the code.", depends_on=["planner"], max_tokens=256, temperature=0.2),
            Agent("reviewer", depends_on=("coder",), optional=True),
        ],
    )
    from_yaml = Workflow.from_yaml(YAML)
    assert from_yaml == in_python
    assert from_yaml.graph.order == ("planner", "coder", "reviewer")
    assert from_yaml.graph.optional_agents == {"reviewer"}
    assert from_yaml.agent("coder").max_tokens == 256
    assert from_yaml.agent("reviewer").system_prompt == ""
    assert from_yaml.agent_ids == ("planner", "coder", "reviewer") and "coder" in from_yaml


def test_files_are_read_by_suffix_and_named_after_their_stem(tmp_path: Path) -> None:
    wf = Workflow.from_yaml(YAML)
    body = {k: v for k, v in wf.to_dict().items() if k != "name"}
    (tmp_path / "pipeline.json").write_text(json.dumps(body))
    (tmp_path / "pipeline.yaml").write_text(YAML)
    from_json = Workflow.from_file(tmp_path / "pipeline.json")
    assert from_json.name == "pipeline" and from_json.agents == wf.agents
    assert Workflow.from_file(tmp_path / "pipeline.yaml") == wf
    with pytest.raises(WorkflowError, match="cannot read workflow file"):
        Workflow.from_file(tmp_path / "missing.yaml")


def test_repeat_is_declared_on_the_graph() -> None:
    wf = Workflow.from_yaml(
        "name: peer\nrepeat: true\nagents: [{agent_id: planner}, {agent_id: executor, depends_on: [planner]}]"
    )
    assert wf.repeat and wf.graph.repeat


@pytest.mark.parametrize(
    "text, error, needle",
    [
        ("name: w\nagents: [{agent_id: a, depends: [b]}]", WorkflowError, "'depends'"),
        ("name: w\nagent: []", WorkflowError, "'agent'"),
        ("name: w\nagents: []", WorkflowError, "non-empty list"),
        ("name: w\nagents: [{system_prompt: hi}]", WorkflowError, "agent_id"),
        ("name: w\nagents: [{agent_id: a, depends_on: [zzz]}]", UnknownDependencyError, "zzz"),
        ("name: w\nagents: [{agent_id: a}, {agent_id: a}]", DuplicateAgentError, "'a'"),
        ("name: w\nagents: [{agent_id: a, depends_on: b}]", WorkflowError, "depends_on"),
        ("name: w\nagents: [{agent_id: a, max_tokens: 0}]", WorkflowError, "max_tokens"),
        ("name: w\nagents: [{agent_id: a, temperature: 3}]", WorkflowError, "temperature"),
        ("name: w\nagents: [{agent_id: a, system_prompt: [x]}]", WorkflowError, "system_prompt"),
        ("name: w\nrepeat: yes please\nagents: [{agent_id: a}]", WorkflowError, "repeat"),
        ("agents: [{agent_id: a}]", WorkflowError, "name"),
        ("name: w\nagents: [{agent_id: a, optional: maybe}]", WorkflowError, "optional"),
        ("[1, 2]", WorkflowError, "mapping"),
        ("name: [unclosed", WorkflowError, "invalid YAML"),
    ],
)
def test_bad_declarations_name_what_is_wrong(text: str, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as info:
        Workflow.from_yaml(text)
    assert needle in str(info.value)


def test_cycle_error_shows_the_path_and_the_workflow() -> None:
    agents = [Agent("a", depends_on=["c"]), Agent("b", depends_on=["a"]), Agent("c", depends_on=["b"])]
    with pytest.raises(CycleError) as info:
        Workflow("loop", agents)
    path = info.value.cycle
    assert path[0] == path[-1] and set(path) == {"a", "b", "c"}
    assert any("loop" in note for note in info.value.__notes__)


def test_unknown_agent_lists_the_agents() -> None:
    wf = Workflow.from_yaml(YAML)
    with pytest.raises(UnknownAgentError, match="ghost.*planner, coder, reviewer"):
        wf.agent("ghost")


def test_python_type_errors() -> None:
    with pytest.raises(WorkflowError, match="must be an Agent"):
        Workflow("w", [{"agent_id": "a"}])  # type: ignore[list-item]
    with pytest.raises(WorkflowError, match="name"):
        Workflow("", [Agent("a")])
    with pytest.raises(WorkflowError, match="agent_id"):
        Agent("")


_ids = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)


@st.composite
def workflows(draw: st.DrawFn) -> Workflow:
    """Random DAGs: each agent depends on a subset of the agents declared before it."""
    ids = draw(st.lists(_ids, min_size=1, max_size=8, unique=True))
    agents = []
    for i, agent_id in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:i]), unique=True)) if i else []
        agents.append(Agent(
            agent_id,
            draw(st.text(max_size=30)),
            depends_on=deps,
            optional=draw(st.booleans()),
            max_tokens=draw(st.none() | st.integers(1, 4096)),
            temperature=draw(st.none() | st.floats(0, 2)),
        ))
    return Workflow(draw(_ids), agents, repeat=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(workflows())
def test_yaml_and_json_round_trip(wf: Workflow) -> None:
    assert Workflow.from_yaml(wf.to_yaml()) == wf
    assert Workflow.from_json(json.dumps(wf.to_dict())) == wf
    order = wf.graph.order
    for agent in wf.agents:
        assert all(order.index(dep) < order.index(agent.agent_id) for dep in agent.depends_on)
