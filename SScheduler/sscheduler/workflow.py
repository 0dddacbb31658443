"""Declaring a workflow: agents with system prompts and dependencies, in Python or YAML/JSON.

A YAML (or JSON) file looks like::

    name: coding
    repeat: false            # optional; true = the instance loops round after round
    agents:
      - agent_id: planner
        system_prompt: You break the task into steps.
      - agent_id: coder
        system_prompt: You write the code.
        depends_on: [planner]
        max_tokens: 256       # optional per-agent defaults for calls
        temperature: 0.2
      - agent_id: reviewer
        depends_on: [coder]
        optional: true

The dependency graph is validated by `context_forge.workflow.graph.WorkflowGraph` (unknown
dependencies, duplicates and cycles raise its `WorkflowError` subclasses); unknown keys are an
error so that a typo is never silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from context_forge.workflow.errors import UnknownAgentError, WorkflowError
from context_forge.workflow.graph import AgentSpec, WorkflowGraph

__all__ = ["Agent", "Workflow"]

_AGENT_KEYS = ("agent_id", "system_prompt", "depends_on", "optional", "max_tokens", "temperature")
_WORKFLOW_KEYS = ("name", "agents", "repeat")


@dataclass(frozen=True)
class Agent:
    """One agent: its id, system prompt, dependencies and default sampling for its calls.

    `max_tokens` / `temperature` of None leave the choice to each call (or to the server).
    """

    agent_id: str
    system_prompt: str = ""
    depends_on: tuple[str, ...] = ()
    optional: bool = False
    max_tokens: int | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        spec = AgentSpec(self.agent_id, self.depends_on, self.optional)
        object.__setattr__(self, "depends_on", spec.depends_on)
        if not isinstance(self.system_prompt, str):
            raise WorkflowError(
                f"system_prompt of agent {self.agent_id!r} must be a string, got {type(self.system_prompt).__name__}"
            )
        mt = self.max_tokens
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise WorkflowError(f"max_tokens of agent {self.agent_id!r} must be an integer >= 1, got {mt!r}")
        t = self.temperature
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2):
            raise WorkflowError(f"temperature of agent {self.agent_id!r} must be a number in [0, 2], got {t!r}")

    @property
    def spec(self) -> AgentSpec:
        return AgentSpec(self.agent_id, self.depends_on, self.optional)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "agent") -> Agent:
        if not isinstance(data, Mapping):
            raise WorkflowError(f"{where} must be a mapping, got {type(data).__name__}")
        _reject_unknown(data, _AGENT_KEYS, where)
        if "agent_id" not in data:
            raise WorkflowError(f"{where} has no 'agent_id'")
        deps = data.get("depends_on") or []
        if not isinstance(deps, list):
            raise WorkflowError(f"{where}.depends_on must be a list of agent ids, got {deps!r}")
        prompt = data.get("system_prompt")
        return cls(
            agent_id=data["agent_id"],
            system_prompt="" if prompt is None else prompt,
            depends_on=tuple(deps),
            optional=data.get("optional", False),
            max_tokens=data.get("max_tokens"),
            temperature=data.get("temperature"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent_id": self.agent_id, "system_prompt": self.system_prompt}
        out["depends_on"] = list(self.depends_on)
        out["optional"] = self.optional
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        return out


@dataclass(frozen=True)
class Workflow:
    """A named set of agents and their dependency graph (validated at construction).

    `name` prefixes the ids of the instances started from it; `repeat` declares a looping
    workflow (every round runs the whole graph again, e.g. planner -> executor -> reviewer -> ...).
    """

    name: str
    agents: Sequence[Agent]
    repeat: bool = False
    graph: WorkflowGraph = field(init=False, repr=False, compare=False)
    _by_id: dict[str, Agent] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise WorkflowError(f"workflow name must be a non-empty string, got {name!r}")
        if isinstance(self.agents, (str, bytes)) or not isinstance(self.agents, Iterable):
            raise WorkflowError(f"agents of workflow {name!r} must be a list of Agent, got {self.agents!r}")
        agents = tuple(self.agents)
        for i, agent in enumerate(agents):
            if not isinstance(agent, Agent):
                raise WorkflowError(f"agents[{i}] of workflow {name!r} must be an Agent, got {type(agent).__name__}")
        try:
            graph = WorkflowGraph([a.spec for a in agents], repeat=self.repeat)
        except WorkflowError as exc:
            exc.add_note(f"in workflow {name!r}")
            raise
        object.__setattr__(self, "agents", agents)
        object.__setattr__(self, "graph", graph)
        object.__setattr__(self, "_by_id", {a.agent_id: a for a in agents})

    def agent(self, agent_id: str) -> Agent:
        """The agent named `agent_id`; `UnknownAgentError` lists the workflow's agents otherwise."""
        try:
            return self._by_id[agent_id]
        except (KeyError, TypeError):
            known = ", ".join(self._by_id)
            raise UnknownAgentError(agent_id, f"workflow {self.name!r} (its agents: {known})") from None

    @property
    def agent_ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._by_id

    # ---- construction from data ------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> Workflow:
        """From `{"name", "agents": [...], "repeat"?}`; `name` fills in a missing `name` key."""
        if not isinstance(data, Mapping):
            raise WorkflowError(f"a workflow must be a mapping, got {type(data).__name__}")
        _reject_unknown(data, _WORKFLOW_KEYS, "workflow")
        wf_name = data.get("name", name)
        if wf_name is None:
            raise WorkflowError("a workflow needs a 'name'")
        raw = data.get("agents")
        if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not raw:
            raise WorkflowError(f"workflow {wf_name!r}: 'agents' must be a non-empty list, got {raw!r}")
        agents = [Agent.from_dict(entry, f"agents[{i}]") for i, entry in enumerate(raw)]
        repeat = data.get("repeat", False)
        if not isinstance(repeat, bool):
            raise WorkflowError(f"workflow {wf_name!r}: 'repeat' must be true or false, got {repeat!r}")
        return cls(wf_name, agents, repeat=repeat)

    @classmethod
    def from_yaml(cls, text: str, name: str | None = None) -> Workflow:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WorkflowError(f"invalid YAML workflow: {exc}") from None
        return cls.from_dict(data, name)

    @classmethod
    def from_json(cls, text: str, name: str | None = None) -> Workflow:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"invalid JSON workflow: {exc}") from None
        return cls.from_dict(data, name)

    @classmethod
    def from_file(cls, path: str | Path) -> Workflow:
        """A `.json` file is read as JSON, anything else as YAML; the name defaults to the file stem."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkflowError(f"cannot read workflow file {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".json":
                return cls.from_json(text, name=path.stem)
            return cls.from_yaml(text, name=path.stem)
        except WorkflowError as exc:
            exc.add_note(f"while reading workflow file {path}")
            raise

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "repeat": self.repeat, "agents": [a.to_dict() for a in self.agents]}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _reject_unknown(data: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        raise WorkflowError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
