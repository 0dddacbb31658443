"""Declared workflow step graphs: a DAG of agents, validated once, with topological order and depths."""
from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from context_forge.workflow.errors import (
    CycleError,
    DuplicateAgentError,
    UnknownAgentError,
    UnknownDependencyError,
    WorkflowError,
)

__all__ = [
    "AgentSpec",
    "CycleError",
    "DuplicateAgentError",
    "UnknownAgentError",
    "UnknownDependencyError",
    "WorkflowError",
    "WorkflowGraph",
]


def _check_agent_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise WorkflowError(f"{what} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class AgentSpec:
    """One agent of a graph. `depends_on` agents must all complete before it runs.

    `optional` marks an agent that a conditional branch may skip; it still counts in step
    computations. A list given as `depends_on` is stored as a tuple; repeated entries are dropped.
    """

    agent_id: str
    depends_on: tuple[str, ...] = field(default=())
    optional: bool = False

    def __post_init__(self) -> None:
        _check_agent_id(self.agent_id, "agent_id")
        deps = self.depends_on
        if isinstance(deps, (str, bytes)) or not isinstance(deps, Sequence):
            raise WorkflowError(
                f"depends_on of agent {self.agent_id!r} must be a list of strings, got {deps!r}"
            )
        for i, dep in enumerate(deps):
            _check_agent_id(dep, f"depends_on[{i}] of agent {self.agent_id!r}")
        object.__setattr__(self, "depends_on", tuple(dict.fromkeys(deps)))
        if not isinstance(self.optional, bool):
            raise WorkflowError(
                f"optional of agent {self.agent_id!r} must be a boolean, got {self.optional!r}"
            )


class WorkflowGraph:
    """A validated DAG of agents.

    Construction checks for duplicate ids, unknown dependencies and cycles, then precomputes the
    topological order (stable: ties keep declaration order), each agent's depth (longest path from a
    root, roots are 0), its dependents, and the agents affected by its completion (itself and its
    descendants, in topological order). `repeat=True` declares a looping instance: when every agent of
    a round completed, a new round starts.
    """

    def __init__(self, agents: Sequence[AgentSpec], repeat: bool = False) -> None:
        if not isinstance(repeat, bool):
            raise WorkflowError(f"repeat must be a boolean, got {repeat!r}")
        agents = tuple(agents)
        if not agents:
            raise WorkflowError("a workflow graph needs at least one agent")
        specs: dict[str, AgentSpec] = {}
        for i, spec in enumerate(agents):
            if not isinstance(spec, AgentSpec):
                raise WorkflowError(f"agents[{i}] must be an AgentSpec, got {type(spec).__name__}")
            if spec.agent_id in specs:
                raise DuplicateAgentError(spec.agent_id)
            specs[spec.agent_id] = spec
        for spec in agents:
            for dep in spec.depends_on:
                if dep not in specs:
                    raise UnknownDependencyError(spec.agent_id, dep)
        self._agents = agents
        self._specs = specs
        self._repeat = repeat
        self._dependents: dict[str, tuple[str, ...]] = {a: () for a in specs}
        for spec in agents:
            for dep in spec.depends_on:
                self._dependents[dep] += (spec.agent_id,)
        _raise_on_cycle(agents, self._dependents)
        self._order = _topological_order(agents, self._dependents)
        self._index = {a: i for i, a in enumerate(self._order)}
        self._depth: dict[str, int] = {}
        for a in self._order:
            deps = specs[a].depends_on
            self._depth[a] = 1 + max(self._depth[d] for d in deps) if deps else 0
        self._affected = {a: self._collect_affected(a) for a in self._order}
        self._dependency_view = MappingProxyType({a: specs[a].depends_on for a in self._order})
        self._depth_view = MappingProxyType(self._depth)
        self._affected_view = MappingProxyType(self._affected)
        self._optional = frozenset(s.agent_id for s in agents if s.optional)

    def _collect_affected(self, agent_id: str) -> tuple[str, ...]:
        seen = {agent_id}
        stack = [agent_id]
        while stack:
            for child in self._dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return tuple(sorted(seen, key=self._index.__getitem__))

    # ---- construction from data ------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowGraph:
        """Build from `{"agents": [{"agent_id", "depends_on"?, "optional"?}, ...], "repeat"?}`.

        The trace's `workflow` record is accepted as is: extra keys (`type`, `workflow_id`, ...)
        are ignored, at the top level and in each agent entry.
        """
        if not isinstance(data, Mapping):
            raise WorkflowError(f"a workflow graph must be a mapping, got {type(data).__name__}")
        if "agents" not in data:
            raise WorkflowError("a workflow graph needs an 'agents' list")
        raw_agents = data["agents"]
        if not isinstance(raw_agents, list):
            raise WorkflowError(f"'agents' must be a list, got {type(raw_agents).__name__}")
        specs = []
        for i, entry in enumerate(raw_agents):
            if not isinstance(entry, Mapping):
                raise WorkflowError(f"agents[{i}] must be a mapping, got {type(entry).__name__}")
            if "agent_id" not in entry:
                raise WorkflowError(f"agents[{i}] has no 'agent_id'")
            agent_id = _check_agent_id(entry["agent_id"], f"agents[{i}].agent_id")
            deps = entry.get("depends_on", [])
            if deps is None:
                deps = []
            if not isinstance(deps, list):
                raise WorkflowError(
                    f"agents[{i}].depends_on (agent {agent_id!r}) must be a list of strings, got {deps!r}"
                )
            for j, dep in enumerate(deps):
                _check_agent_id(dep, f"agents[{i}].depends_on[{j}] (agent {agent_id!r})")
            optional = entry.get("optional", False)
            if not isinstance(optional, bool):
                raise WorkflowError(
                    f"agents[{i}].optional (agent {agent_id!r}) must be a boolean, got {optional!r}"
                )
            specs.append(AgentSpec(agent_id, tuple(deps), optional))
        repeat = data.get("repeat", False)
        if not isinstance(repeat, bool):
            raise WorkflowError(f"'repeat' must be a boolean, got {repeat!r}")
        return cls(specs, repeat=repeat)

    @classmethod
    def from_json(cls, text: str) -> WorkflowGraph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"invalid JSON workflow graph: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, text: str) -> WorkflowGraph:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WorkflowError(f"invalid YAML workflow graph: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> WorkflowGraph:
        """Read a `.json` file as JSON and anything else as YAML (a superset of JSON)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                return cls.from_json(text)
            return cls.from_yaml(text)
        except WorkflowError as exc:
            exc.add_note(f"while reading workflow graph file {path}")
            raise

    def to_dict(self) -> dict[str, Any]:
        return {
            "agents": [
                {"agent_id": s.agent_id, "depends_on": list(s.depends_on), "optional": s.optional}
                for s in self._agents
            ],
            "repeat": self._repeat,
        }

    # ---- queries ---------------------------------------------------------------------------

    @property
    def agents(self) -> tuple[AgentSpec, ...]:
        """Agents in declaration order."""
        return self._agents

    @property
    def agent_ids(self) -> tuple[str, ...]:
        return tuple(self._specs)

    @property
    def order(self) -> tuple[str, ...]:
        """Agent ids in topological order (every agent after all its dependencies)."""
        return self._order

    @property
    def repeat(self) -> bool:
        return self._repeat

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(a for a in self._order if not self._specs[a].depends_on)

    @property
    def dependency_map(self) -> Mapping[str, tuple[str, ...]]:
        """Read-only agent -> dependencies view, for hot loops that avoid per-call validation."""
        return self._dependency_view

    @property
    def depth_map(self) -> Mapping[str, int]:
        return self._depth_view

    @property
    def affected_map(self) -> Mapping[str, tuple[str, ...]]:
        """Read-only agent -> (agent and its descendants, topologically ordered)."""
        return self._affected_view

    @property
    def optional_agents(self) -> frozenset[str]:
        return self._optional

    def spec(self, agent_id: str) -> AgentSpec:
        try:
            return self._specs[agent_id]
        except KeyError:
            raise UnknownAgentError(agent_id) from None

    def depends_on(self, agent_id: str) -> tuple[str, ...]:
        return self.spec(agent_id).depends_on

    def dependents(self, agent_id: str) -> tuple[str, ...]:
        self.spec(agent_id)
        return self._dependents[agent_id]

    def depth(self, agent_id: str) -> int:
        """Longest path from a root to the agent (roots are 0): its step in a fresh instance."""
        self.spec(agent_id)
        return self._depth[agent_id]

    def affected(self, agent_id: str) -> tuple[str, ...]:
        """The agent and all its descendants, in topological order."""
        self.spec(agent_id)
        return self._affected[agent_id]

    def is_optional(self, agent_id: str) -> bool:
        return self.spec(agent_id).optional

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._specs

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkflowGraph):
            return NotImplemented
        return self._agents == other._agents and self._repeat == other._repeat

    def __hash__(self) -> int:
        return hash((self._agents, self._repeat))

    def __repr__(self) -> str:
        flag = ", repeat=True" if self._repeat else ""
        return f"WorkflowGraph(order={list(self._order)}{flag})"


def _raise_on_cycle(agents: Sequence[AgentSpec], dependents: Mapping[str, tuple[str, ...]]) -> None:
    """Depth-first search along dependency -> dependent edges; a back edge yields the cycle path."""
    white, grey, black = 0, 1, 2
    colour = {s.agent_id: white for s in agents}
    for start in [s.agent_id for s in agents]:
        if colour[start] != white:
            continue
        colour[start] = grey
        path = [start]
        iters = [iter(dependents[start])]
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = black
                iters.pop()
            elif colour[nxt] == grey:
                raise CycleError(path[path.index(nxt):] + [nxt])
            elif colour[nxt] == white:
                colour[nxt] = grey
                path.append(nxt)
                iters.append(iter(dependents[nxt]))


def _topological_order(
    agents: Sequence[AgentSpec], dependents: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    position = {s.agent_id: i for i, s in enumerate(agents)}
    missing = {s.agent_id: len(s.depends_on) for s in agents}
    ready = [(i, s.agent_id) for i, s in enumerate(agents) if not s.depends_on]
    order: list[str] = []
    while ready:
        _, agent = heapq.heappop(ready)
        order.append(agent)
        for child in dependents[agent]:
            missing[child] -= 1
            if missing[child] == 0:
                heapq.heappush(ready, (position[child], child))
    return tuple(order)
