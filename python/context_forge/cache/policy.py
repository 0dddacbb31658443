"""Eviction policies: how the radix cache ranks nodes for eviction. Chosen by name from config.

A policy maps a node to a sort key; the node with the smallest key is evicted first. Keys may
change when a node is accessed (the cache re-queues accessed nodes) or when an agent's priority
changes (the cache drains :meth:`EvictionPolicy.changed_agents` before each eviction and re-queues
that agent's nodes), so the cache's heap stays exact without scanning the tree.

Adding a policy is one class plus ``@register_policy("name")``: the class says what it needs
(``priority``, ``needs_oracle``), whether the prefetcher runs with it (``prefetches``,
``plans_undeclared``), whether it can serve (``serving``) and how the SGLang backend maps it
(``sglang``); configuration, the engine, the simulator, the SGLang launcher and the benchmarks
read these instead of naming policies.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any, Callable, ClassVar, Protocol

from context_forge.registry import Registry

from .node import RadixNode


class PrioritySource(Protocol):
    """What policies need from ``context_forge.workflow.priority.AgentPriority``."""

    def priority(self, agent_id: str) -> float: ...

    def subscribe(self) -> Any: ...


class WorkflowSource(Protocol):
    """What policy construction needs from ``workflow.live.LiveWorkflows``."""

    def priority(self, name: str) -> PrioritySource: ...


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may be built from: the live workflows (for ``priority``), the level up to
    which steps rank exactly, and, offline only, the next-use oracle."""

    workflows: WorkflowSource | None = None
    evict_pri_level: int = 4
    oracle: Callable[[RadixNode], float] | None = None


class EvictionPolicy(ABC):
    """Ranks radix nodes for eviction: smaller key = evicted sooner."""

    name: str = ""
    priority: ClassVar[str | None] = None
    """Name of the ``LiveWorkflows`` priority the policy ranks user tags by (``None``: none)."""
    prefetches: ClassVar[bool] = False
    """Whether the workflow prefetcher loads KV ahead of need with this policy."""
    plans_undeclared: ClassVar[bool] = False
    """Whether prefetch also plans undeclared workflows from the next-agent predictor."""
    serving: ClassVar[bool] = True
    """False for offline-only policies (they need knowledge of the future)."""
    needs_oracle: ClassVar[bool] = False
    """Whether construction needs ``PolicyContext.oracle`` (next use of a node)."""
    sglang: ClassVar[str | None] = None
    """How the SGLang backend runs it: ``"lru"`` (SGLang's own), a plugin priority (``"steps"``,
    ``"blended"``), or ``None`` (not available there)."""

    @classmethod
    def create(cls, context: PolicyContext) -> EvictionPolicy:
        """Build the policy from what it declares it needs."""
        kwargs: dict[str, Any] = {"evict_pri_level": context.evict_pri_level}
        if cls.priority is not None:
            if context.workflows is None:
                raise ValueError(f"eviction policy {cls.name!r} needs the live workflows")
            kwargs["priority"] = context.workflows.priority(cls.priority)
        if cls.needs_oracle:
            if context.oracle is None:
                raise ValueError(f"eviction policy {cls.name!r} needs a next-use oracle (simulator only)")
            kwargs["oracle"] = context.oracle
        return cls(**kwargs)

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


def serving_policies() -> list[str]:
    """Policies that can run in a server (not offline-only), in registration order."""
    return [n for n in _POLICIES.names() if _POLICIES.lookup(n).serving]


def policy_class(name: str) -> type[EvictionPolicy]:
    """The class registered as ``name``; unknown names list the known ones."""
    return _POLICIES.lookup(name, sort_names=True)


def get_policy(name: str, **kwargs: Any) -> EvictionPolicy:
    """Build the policy registered as ``name`` from keyword arguments."""
    return policy_class(name)(**kwargs)


def build_policy(name: str, context: PolicyContext) -> EvictionPolicy:
    """Build the policy registered as ``name`` from what it declares it needs."""
    return policy_class(name).create(context)


@register_policy("lru")
class LRUPolicy(EvictionPolicy):
    """Least recently used first."""

    sglang = "lru"

    def __init__(self, **_: Any) -> None:
        pass

    def key(self, node: RadixNode) -> tuple:
        return (node.last_access,)


def rank_level(rank: float, near: float, bands: bool = True) -> float:
    """The eviction level of a node whose next use is ``rank`` steps away (higher = evicted sooner).

    Ranks up to ``near`` keep their value; farther ones fall into geometric bands (ratio sqrt 2)
    above it, or, with ``bands`` off, all into one level ``near + 1``; ``inf`` (no user expected)
    is its own level above every band, so such KV always goes first."""
    if rank <= near:
        return rank
    if math.isinf(rank):
        return math.inf
    if not bands:
        return near + 1.0
    return near + 1.0 + math.floor(2.0 * math.log2(rank / max(near, 1.0)))


def rank_key(rank: float, near: float, last_access: float, declared: bool = False, bands: bool = True,
             arrival: int | None = None) -> tuple:
    """The eviction key of a node whose next use is ``rank`` steps away (smaller = evicted sooner).

    ``(-rank_level(rank), declared, +-last_access)``: farthest level first. Within a level, nodes
    ranked by a live instance's declared graph (``declared``) go after the others (a certainty
    outlasts a guess), and among themselves the most recently used goes first: instances of one
    team step through the same agents in turn, so the instance that used its node last comes back
    to it last (a loop, where LRU evicts exactly the node needed next; measured with
    ``benchmarks/rank_sweep.py``: concurrent/defaults 40 % 0.904 -> 0.944 of Belady's hits,
    chain-12-dense 40 % 0.944 -> 0.987, predicted ranks unchanged, where the same order lost up to
    5 % of hits, so they keep least recently used first).

    ``arrival`` (the earliest unfinished request among the node's tags, `ArrivalOrder.first`):
    among nodes due now, KV that requests already waiting will use goes after the rest, the
    latest arrival first, since the queue is admitted first come, first served
    (``(0, 2, -arrival)``; measured with ``benchmarks/rank_sweep.py``: rounds-300 20 % 0.926 ->
    0.982 of Belady's hits, rounds-reactors 20 % 0.826 -> 0.862, wide-one-at-a-time 20 % 0.943 ->
    1.022 and 40 % 0.946 -> 1.005, no cell lower)."""
    level = rank_level(rank, near, bands)
    if arrival is not None and level == 0:
        return (-level, 2, -arrival)
    if declared and not math.isinf(level):
        return (-level, 1, -last_access)
    return (-level, 0, last_access)


def nearest_use(tags: Iterable[str], priority: Callable[[str], float],
                declared: Callable[[str], bool] | None = None) -> tuple[float, bool]:
    """The nearest next use among ``tags`` (``inf`` when none is expected), and whether
    ``declared`` holds for a tag at that rank (for any of the tags tied there: the answer must not
    depend on set order). Ranks are steps, never below 0, so a 0 ends the search once decided."""
    best, is_declared = math.inf, False
    for tag in tags:
        p = priority(tag)
        if p < best:
            best = p
            is_declared = declared is not None and declared(tag)
        elif p == best and not is_declared and declared is not None and p < math.inf:
            is_declared = declared(tag)
        if best <= 0 and (is_declared or declared is None):
            break
    return best, is_declared


def anonymous_key(near: float, last_access: float, bands: bool = True) -> tuple:
    """The eviction key of *anonymous* KV: no request carrying a tag has used it (a warm-up, a
    client that sends no workflow metadata), so nothing says when it is needed. It ranks at the
    farthest exact level, ``near`` (``evict_pri_level``) steps, least recently used first: KV
    known to be needed later or not at all goes before it, KV a live instance needs sooner after
    it. Ranked as dead instead (evicted first), the e2e warm-up's system prompts left the device
    and the host before their first use, and kvflow / pbkv recomputed 75,636 / 87,572 prompt
    tokens where lru recomputed 20,180 (H100, ``benchmarks/results/e2e/h100_2026-12-08b``,
    dynamic-8k-25; the CPU smoke's dynamic-64-25: 185-249 against lru's 57, 57 with this key)."""
    return rank_key(near, near, last_access, bands=bands)


def earliest_arrival(tags: Iterable[str], arrival: Callable[[str], int | None] | None) -> int | None:
    """The earliest arrival number among ``tags``' unfinished requests (`rank_key`'s ``arrival``);
    None when no tag has one or there is no ``arrival`` source."""
    if arrival is None:
        return None
    seqs = [a for a in map(arrival, tags) if a is not None]
    return min(seqs) if seqs else None


class _AgentAwarePolicy(EvictionPolicy):
    """Ranks by the node's nearest next use among its user tags, then by recency (`rank_key`).

    ``node_priority = min(priority(t) for t in node.agents)``: the tags (``cache.usage``) name the
    workflows' agents whose latest prompts run through the node and, for KV shared across
    instances, the bare agent (its next call by any instance). The level is
    ``rank_level(node_priority, evict_pri_level)``: exact up to ``evict_pri_level`` steps, geometric
    bands beyond, and KV no user is expected to need evicted first.
    Key: `rank_key` (farthest from use first; the order within a level is explained there), with
    ``declared`` when the most urgent tag is a scoped key of a declared instance (the priority
    source's ``declared``) and, for nodes due now, the earliest arrival among the tags' unfinished
    requests (the source's ``arrival``). A node no tagged request has used is anonymous
    (`anonymous_key`); one whose tags the usage rules removed is expected by no one and goes first.
    """

    bands = True

    def __init__(self, priority: PrioritySource, evict_pri_level: int = 4, **_: Any) -> None:
        if evict_pri_level < 0:
            raise ValueError(f"evict_pri_level must be >= 0, got {evict_pri_level}")
        self.source = priority
        self.near = float(evict_pri_level)
        self._feed = priority.subscribe()
        self._declared: Callable[[str], bool] | None = getattr(priority, "declared", None)
        self._arrival: Callable[[str], int | None] | None = getattr(priority, "arrival", None)

    def node_priority(self, node: RadixNode) -> float:
        return nearest_use(node.agents, self.source.priority)[0]

    def key(self, node: RadixNode) -> tuple:
        if not node.agents and not node.touched:
            return anonymous_key(self.near, node.last_access, self.bands)
        best, declared = nearest_use(node.agents, self.source.priority, self._declared)
        arrival = earliest_arrival(node.agents, self._arrival) if best <= 0 else None
        return rank_key(best, self.near, node.last_access, declared, self.bands, arrival)

    def changed_agents(self) -> set[str]:
        return self._feed.drain()

    def prefetch_limit(self, node: RadixNode) -> tuple:
        """Only KV of *strictly less urgent* users may make room for a prefetch: nodes at the same
        level are not displaced (their LRU order would make concurrent prefetches evict each other)."""
        return (self.key(node)[0], -math.inf)


@register_policy("kvflow")
class KVFlowPolicy(_AgentAwarePolicy):
    """Next use from the declared workflow graphs (KVFlow's steps-to-execution) and the learned
    recurrence of agents across workflows, LRU tie-break (``LiveWorkflows.scoped_graph_priority``)."""

    priority = "scoped_graph"
    prefetches = True
    sglang = "steps"


@register_policy("pbkv")
class PBKVPolicy(_AgentAwarePolicy):
    """Like kvflow, with undeclared workflows scored by the next-agent predictor and their
    agents' recurrence (PBKV), LRU tie-break (``LiveWorkflows.scoped_blended_priority``)."""

    priority = "scoped_blended"
    prefetches = True
    plans_undeclared = True
    sglang = "blended"


@register_policy("belady")
class BeladyPolicy(EvictionPolicy):
    """Offline optimum for the simulator: evict the node whose next use is farthest away.

    ``oracle(node)`` returns the time (or request index) of the next request that will use the
    node, ``inf`` if none. A node's next use changes only when it is used, and the cache
    re-queues nodes on access, so the heap stays exact. Never used for serving.
    """

    serving = False
    needs_oracle = True

    def __init__(self, oracle: Callable[[RadixNode], float], **_: Any) -> None:
        self.oracle = oracle

    def key(self, node: RadixNode) -> tuple:
        return (-self.oracle(node), node.last_access)
