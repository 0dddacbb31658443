"""Eviction policies: how the radix cache ranks nodes for eviction. Chosen by name from config.

A policy maps a node to a sort key; the node with the smallest key is evicted first. Keys may
change when a node is accessed (the cache re-queues accessed nodes) or when an agent's priority
changes (the cache drains :meth:`EvictionPolicy.changed_agents` before each eviction and re-queues
that agent's nodes), so the cache's heap stays exact without scanning the tree.

Adding a policy is one class plus ``@register_policy("name")``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol

from context_forge.registry import Registry

from .node import RadixNode


class PrioritySource(Protocol):
    """What policies need from ``context_forge.workflow.priority.AgentPriority``."""

    def priority(self, agent_id: str) -> float: ...

    def subscribe(self) -> Any: ...


class EvictionPolicy(ABC):
    """Ranks radix nodes for eviction: smaller key = evicted sooner."""

    name: str = ""

    @abstractmethod
    def key(self, node: RadixNode) -> tuple:
        """Sort key of ``node``; must depend only on the node's annotations and outside state."""

    def changed_agents(self) -> set[str]:
        """Agents whose priority changed since the last call (their nodes get re-ranked)."""
        return set()

    def prefetch_limit(self, node: RadixNode) -> tuple:
        """Eviction limit for loading ``node`` ahead of need: only nodes ranked strictly below this
        may be evicted to make room (see ``RadixCache.begin_load``)."""
        return self.key(node)

    def node_priority(self, node: RadixNode) -> float:
        """Expected steps until the most urgent user of the node runs (``inf`` if none)."""
        return math.inf


_POLICIES: Registry[type[EvictionPolicy]] = Registry("eviction policy")


def register_policy(name: str) -> Callable[[type[EvictionPolicy]], type[EvictionPolicy]]:
    return _POLICIES.register(name)


def available_policies() -> list[str]:
    return sorted(_POLICIES.names())


def get_policy(name: str, **kwargs: Any) -> EvictionPolicy:
    """Build the policy registered as ``name``; unknown names list the known ones."""
    return _POLICIES.lookup(name, sort_names=True)(**kwargs)


@register_policy("lru")
class LRUPolicy(EvictionPolicy):
    """Least recently used first."""

    def __init__(self, **_: Any) -> None:
        pass

    def key(self, node: RadixNode) -> tuple:
        return (node.last_access,)


class _AgentAwarePolicy(EvictionPolicy):
    """Ranks by the most urgent agent among the node's users, clamped, with LRU tie-break.

    ``node_priority = min(priority(a) for a in node.agents)``; a request passes through every
    ancestor of its nodes, so a prefix shared with an agent about to run inherits that agent's
    urgency however far away its other sharers are. Levels beyond ``evict_pri_level`` are
    clamped to ``evict_pri_level + 1`` so distant agents fall back to LRU order among themselves.
    Key: ``(-level, last_access)``: farthest from running first, then least recently used.
    """

    def __init__(self, priority: PrioritySource, evict_pri_level: int = 4, **_: Any) -> None:
        if evict_pri_level < 0:
            raise ValueError(f"evict_pri_level must be >= 0, got {evict_pri_level}")
        self.source = priority
        self.cap = float(evict_pri_level + 1)
        self._feed = priority.subscribe()

    def node_priority(self, node: RadixNode) -> float:
        prio = self.source.priority
        best = math.inf
        for agent in node.agents:
            p = prio(agent)
            if p < best:
                best = p
                if best <= 0:
                    break
        return best

    def key(self, node: RadixNode) -> tuple:
        level = min(self.node_priority(node), self.cap)
        return (-level, node.last_access)

    def changed_agents(self) -> set[str]:
        return self._feed.drain()

    def prefetch_limit(self, node: RadixNode) -> tuple:
        """Only KV of *strictly less urgent* users may make room for a prefetch: nodes at the same
        level are not displaced (their LRU order would make concurrent prefetches evict each other)."""
        return (self.key(node)[0], -math.inf)


@register_policy("kvflow")
class KVFlowPolicy(_AgentAwarePolicy):
    """Steps-to-execution from the declared workflow graphs (KVFlow), LRU tie-break.

    Pass ``LiveWorkflows.graph_priority`` as ``priority``.
    """


@register_policy("pbkv")
class PBKVPolicy(_AgentAwarePolicy):
    """Blended declared-graph steps and predicted steps (PBKV), LRU tie-break.

    Pass ``LiveWorkflows.blended_priority`` as ``priority``.
    """


@register_policy("belady")
class BeladyPolicy(EvictionPolicy):
    """Offline optimum for the simulator: evict the node whose next use is farthest away.

    ``oracle(node)`` returns the time (or request index) of the next request that will use the
    node, ``inf`` if none. A node's next use changes only when it is used, and the cache
    re-queues nodes on access, so the heap stays exact. Never used for serving.
    """

    def __init__(self, oracle: Callable[[RadixNode], float], **_: Any) -> None:
        self.oracle = oracle

    def key(self, node: RadixNode) -> tuple:
        return (-self.oracle(node), node.last_access)
