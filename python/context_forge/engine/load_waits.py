"""Requests waiting for their prefix to land, when admission has a loader (the prefetcher).

Admission never blocks on a copy: a request whose prefix is on the host gets an on-demand load
queued, and one whose prefix is still landing (a prefetch or an earlier on-demand load) waits.
While it waits it locks the deepest node it matched, so the loaded KV cannot be evicted before
it is admitted; the lock goes when it is admitted (`end`), aborted (`forget`), or when the
scheduler finds no room with nothing running (`drop_all`: those locks could otherwise pin the
pages the head of the queue needs, for good).

Layer waiting (``layer_wait``): a request whose prefix is still landing may start as soon as
every load on its path has issued all its layers (``LayerGate.issued``); the gates go to
``st.kv_gates`` and its first forward pass waits per layer. Until then it waits and its loads
are expedited (no longer paced).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from context_forge.cache.node import RadixNode
from context_forge.cache.radix import MatchResult
from context_forge.cache.tiered import RadixCache

from .req_state import ReqState


class Loader(Protocol):
    """What admission needs from the prefetcher (``prefetch.service.WorkflowPrefetcher``)."""

    def demand(self, node: RadixNode) -> object | None: ...

    def claim(self, pages: Iterable[int], workflow_id: str | None = None, agent_id: str | None = None) -> int: ...

    def release_for_alloc(self) -> bool: ...


@dataclass
class Wait:
    """A waiting request's locked node, since when it waits, and the tokens loaded for it."""

    node: RadixNode
    since: float
    loaded_tokens: int = 0


class LoadWaits:
    """The wait locks of queued requests (engine thread only)."""

    def __init__(self, cache: RadixCache, loader: Loader, clock: Callable[[], float],
                 layer_wait: bool = False) -> None:
        self.cache = cache
        self.loader = loader
        self.clock = clock
        self.layer_wait = layer_wait
        self._waits: dict[ReqState, Wait] = {}

    def __contains__(self, st: ReqState) -> bool:
        return st in self._waits

    def __len__(self) -> int:
        return len(self._waits)

    def must_wait(self, st: ReqState, m: MatchResult) -> bool:
        """Queue an on-demand load for a host-only part of the match, and say whether the request
        must wait (something on its path is loading; with layer waiting, only until every load on
        its path has issued all its layers)."""
        loading = [n for n in m.nodes if n.is_loading]
        task = self.loader.demand(m.last_node) if m.host_len else None
        if not loading and task is None:
            return False
        wait = self._waits.get(st)
        if wait is None or wait.node is not m.last_node:
            self.cache.lock(m.last_node)
            if wait is not None:
                self.cache.unlock(wait.node)
                wait.node = m.last_node
            else:
                wait = self._waits[st] = Wait(m.last_node, self.clock())
        plan = getattr(task, "plan", None)
        if plan is not None:
            wait.loaded_tokens += plan.tokens
            loading.extend(plan.nodes)
        return not (self.layer_wait and self._start_gated(st, loading))

    def _start_gated(self, st: ReqState, loading: list[RadixNode]) -> bool:
        """Layer waiting: take the gates of the loads on the path if all can be waited on per
        layer; otherwise expedite them and say no."""
        gates: list = []
        for n in loading:
            gate = n.loading.gate  # type: ignore[union-attr]
            if gate is None:
                return False
            if gate not in gates:
                gates.append(gate)
        if all(g.issued for g in gates):
            st.kv_gates = gates
            return True
        for g in gates:
            g.expedite = True
        return False

    def end(self, st: ReqState) -> Wait | None:
        """``st`` was admitted: unlock its node; returns its wait (None if it never waited)."""
        wait = self._waits.pop(st, None)
        if wait is not None:
            self.cache.unlock(wait.node)
        return wait

    def forget(self, st: ReqState) -> None:
        """``st`` left the queue without being admitted (abort): drop its wait lock."""
        self.end(st)

    def drop_all(self) -> None:
        """Unlock every waiting request's node (they stay queued and match again when tried: a
        landed prefix is still cached, only evictable now)."""
        for wait in self._waits.values():
            self.cache.unlock(wait.node)
        self._waits.clear()
