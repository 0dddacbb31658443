"""The ``workflow`` eviction strategy for SGLang's radix tree.

SGLang evicts the node with the smallest ``get_priority`` first. A node's rank is the nearest
next use (fewest expected steps, by any live or expected instance: `WorkflowRegistry.priority`)
among the agents that used it or a descendant; ranks fall into the engine's levels
(`context_forge.cache.policy.rank_level`: exact up to ``evict_pri_level``, geometric bands
beyond, nodes no agent is expected to use evicted first). Within a level the order is the
engine's (`context_forge.cache.policy.rank_key`): a node ranked by a client's declared steps goes
after the others, most recently used first; the others least recently used first; among nodes
due now, those that waiting requests will use go last, the latest arrival first. A node no
tagged request has used ranks as the engine's anonymous KV (`anonymous_key`).
"""
from __future__ import annotations

from typing import Any

from sglang.srt.mem_cache.evict_policy import EvictionStrategy

from context_forge.cache.policy import anonymous_key, earliest_arrival, nearest_use, rank_key
from context_forge.sglang.registry import WorkflowRegistry, get_registry
from context_forge.sglang.tags import agents_of

__all__ = ["POLICY_NAME", "WorkflowStrategy"]

POLICY_NAME = "workflow"


class WorkflowStrategy(EvictionStrategy):
    """Order: `rank_key` (farthest rank level first, then declared ranks last, then recency).

    ``evict_pri_level`` may come from ``--radix-eviction-policy-config``; otherwise the
    registry's settings give it. Construction happens inside SGLang's tree core, so the registry
    is this process's (`get_registry`) until the cache binds its own with `bind`.
    """

    def __init__(self, evict_pri_level: int | None = None) -> None:
        if evict_pri_level is not None and (
            isinstance(evict_pri_level, bool) or not isinstance(evict_pri_level, int) or evict_pri_level < 0
        ):
            raise ValueError(f"workflow eviction policy: evict_pri_level must be an integer >= 0, got {evict_pri_level!r}")
        self._level = evict_pri_level
        self.registry: WorkflowRegistry | None = None

    def bind(self, registry: WorkflowRegistry) -> None:
        self.registry = registry

    @property
    def evict_pri_level(self) -> int:
        if self._level is not None:
            return self._level
        return self._registry().settings.evict_pri_level

    def _registry(self) -> WorkflowRegistry:
        if self.registry is None:
            self.registry = get_registry()
        return self.registry

    def steps(self, node: Any) -> float:
        """Fewest steps-to-execution among the node's agents (inf when none is expected)."""
        return nearest_use(agents_of(node), self._registry().priority)[0]

    def get_priority(self, node: Any) -> tuple:
        registry = self._registry()
        tags = agents_of(node)
        if not tags:
            return anonymous_key(float(self.evict_pri_level), node.last_access_time)
        best, declared = nearest_use(tags, registry.priority, registry.is_declared)
        arrival = earliest_arrival(tags, registry.live.arrivals.first) if best <= 0 else None
        return rank_key(best, float(self.evict_pri_level), node.last_access_time, declared, arrival=arrival)
