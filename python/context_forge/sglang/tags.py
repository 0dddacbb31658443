"""Which agents use a radix-tree node, stored on SGLang's tree nodes, and each agent's latest nodes.

A request's agent is added to every node on its path from the root, so a node's set holds the
agents of the node itself and of all its descendants: a shared prefix carries every agent that
shares it. Nodes created by a split (SGLang inserts a parent above an existing node) start
without a set; the first read fills it with the union of its children's sets, which is exactly
what the node held before the split.

Works on any node object with ``parent`` and ``children`` (a dict) attributes, which is what the
Python tree core's ``UnifiedTreeNode`` provides.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

__all__ = ["ATTR", "AgentNodeIndex", "agents_of", "tag_path"]

ATTR = "_context_forge_agents"


def agents_of(node: Any) -> set[str]:
    """The agents that used the node or a descendant (filled lazily for split nodes)."""
    tags = getattr(node, ATTR, None)
    if tags is not None:
        return tags
    pending = [node]
    order: list[Any] = []
    while pending:
        current = pending.pop()
        order.append(current)
        pending.extend(c for c in current.children.values() if getattr(c, ATTR, None) is None)
    for current in reversed(order):
        union: set[str] = set()
        for child in current.children.values():
            union |= getattr(child, ATTR)
        setattr(current, ATTR, union)
    return getattr(node, ATTR)


def tag_path(node: Any, agent_id: str) -> None:
    """Add ``agent_id`` to the node and all its ancestors (the root, parent None, is skipped)."""
    current = node
    while current is not None and current.parent is not None:
        had = getattr(current, ATTR, None)
        if had is None:
            agents_of(current).add(agent_id)
        elif agent_id in had:
            return
        else:
            had.add(agent_id)
        current = current.parent


class AgentNodeIndex:
    """For each agent, the ids of the deepest nodes its recent requests ended on (newest first)."""

    def __init__(self, per_agent: int = 16) -> None:
        if per_agent < 1:
            raise ValueError(f"per_agent must be >= 1, got {per_agent!r}")
        self.per_agent = per_agent
        self._nodes: dict[str, OrderedDict[int, None]] = {}

    def remember(self, agent_id: str, node_id: int) -> None:
        nodes = self._nodes.setdefault(agent_id, OrderedDict())
        nodes[node_id] = None
        nodes.move_to_end(node_id, last=False)
        while len(nodes) > self.per_agent:
            nodes.popitem(last=True)

    def forget(self, agent_id: str, node_id: int) -> None:
        nodes = self._nodes.get(agent_id)
        if nodes is not None:
            nodes.pop(node_id, None)
            if not nodes:
                del self._nodes[agent_id]

    def nodes_of(self, agent_id: str) -> list[int]:
        return list(self._nodes.get(agent_id, ()))

    def agents(self) -> Iterable[str]:
        return list(self._nodes)
