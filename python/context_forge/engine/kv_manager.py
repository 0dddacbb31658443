"""Device pages of running requests, on top of the radix prefix cache (or a bare pool when off).

Page ownership: every device page is free, cached (owned by the radix tree), or in use (owned by
exactly one running request). A request's page table starts with tree pages that it reuses
(locked through one node, never written) followed by its own pages, where its new tokens'
KV is written. Only whole pages are ever handed to the tree, so a request never writes a page
that someone else can read.

Host hits. Without a loader, admission loads a host-only prefix back synchronously. With a
loader (the prefetcher), admission never blocks on a copy: a request whose prefix is on the host
or still landing is answered ``WAITING`` and keeps its matched node locked meanwhile
(`load_waits.LoadWaits`); the scheduler leaves it queued and admits others.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from context_forge.cache.node import RadixNode
from context_forge.kv.pool import PagePool
from context_forge.cache.tiered import RadixCache
from context_forge.workflow.scope import scope_key

from .load_waits import Loader, LoadWaits
from .req_state import ReqState


@dataclass
class AdmitResult:
    """Prefix reuse found at admission: ``device_hit`` tokens already on the device,
    ``host_hit`` tokens loaded back from the host tier for this request, ``prefetch_hit`` of the
    device tokens brought in by a prefetch that no request had used yet, and ``stall_s`` seconds
    the request waited for its prefix to land."""

    device_hit: int
    host_hit: int
    prefetch_hit: int = 0
    stall_s: float = 0.0


class Admission(enum.Enum):
    WAITING = "waiting"


WAITING = Admission.WAITING
"""``KVManager.admit``'s answer for a request whose prefix is still being loaded."""


def cache_tag(st: ReqState) -> str | None:
    """The tag the cache records for ``st``'s nodes: its agent scoped by its workflow."""
    req = st.req
    return scope_key(req.workflow_id, req.agent_id) if req.agent_id else None


class KVManager:
    """Allocates, shares and releases the device pages of requests."""

    def __init__(self, page_size: int, device_pool: PagePool, cache: RadixCache | None,
                 loader: Loader | None = None,
                 on_insert: Callable[[ReqState, RadixNode], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, layer_wait: bool = False) -> None:
        if loader is not None and cache is None:
            raise ValueError("KVManager: a loader needs the radix cache")
        if layer_wait and loader is None:
            raise ValueError("KVManager: layer_wait needs a loader")
        self.layer_wait = layer_wait
        self.gated_admissions = 0
        """Requests admitted while their prefix was still landing (layer waiting)."""
        self.page_size = page_size
        self.pool = device_pool
        self.cache = cache
        self.loader = loader
        self.on_insert = on_insert
        """Called at release with the deepest tree node holding the request's KV (``(st, node)``)."""
        self.clock = clock
        self.in_use = 0
        self._locked = Counter[int]()
        self._waits = LoadWaits(cache, loader, clock, layer_wait) if loader is not None else None

    # ---------------------------------------------------------------- admission
    def admit(self, st: ReqState, reserve: int = 0) -> AdmitResult | Admission | None:
        """Reuse the longest cached prefix of ``st.all_ids`` (host parts: loaded back now, or
        with a loader queued as an on-demand load and answered ``WAITING``), then allocate own
        pages for every pending token. ``reserve`` extra pages must be obtainable too (then stay
        free) so that running requests can keep decoding. ``None``: no room; the request holds
        nothing (a loaded-back prefix stays cached)."""
        assert not st.page_table and st.node is None
        ps = self.page_size
        tokens = st.all_ids
        device_hit = host_hit = 0
        shared: list[int] = []
        cache = self.cache
        if cache is not None:
            key = tokens[:len(tokens) - 1]  # the last token is always computed, for its logits
            agent = cache_tag(st)
            waits = self._waits
            m = cache.match(key, agent_id=agent, touch=waits is None or st not in waits)
            if waits is not None:
                if waits.must_wait(st, m):
                    return WAITING
                if m.host_len:  # admitted with the just-queued load of its host part still landing
                    m = cache.match(key, agent_id=agent, touch=False)
            elif m.host_len:
                host_hit = cache.load_back(m.last_node)
                if host_hit:
                    m = cache.match(key, agent_id=agent, touch=False)
            device_hit = m.device_len - host_hit
            shared = m.device_pages
            node = m.last_device_node
            if node is not None:
                cache.lock(node)
                st.node = node
        need = -(-len(tokens) // ps) - len(shared)
        pages = self._alloc(need + reserve)
        if pages is None:
            if st.node is not None:
                self.cache.unlock(st.node)  # type: ignore[union-attr]
                st.node = None
            st.kv_gates = []
            return None
        if reserve:
            self.pool.free(pages[need:])
            pages = pages[:need]
        self._set_shared(st, shared)
        st.page_table = shared + pages
        st.computed = len(shared) * ps
        self.in_use += need
        result = AdmitResult(device_hit, host_hit)
        if st.kv_gates:
            self.gated_admissions += 1
        if self.loader is not None:
            self._end_wait(st, result, shared, need)
        return result

    def _end_wait(self, st: ReqState, result: AdmitResult, shared: list[int], need: int) -> None:
        wait = self._waits.end(st)  # type: ignore[union-attr]
        if wait is not None:
            loaded = min(wait.loaded_tokens, result.device_hit)
            result.host_hit += loaded
            result.device_hit -= loaded
            result.stall_s = max(0.0, self.clock() - wait.since)
        req = st.req
        result.prefetch_hit = self.loader.claim(shared, req.workflow_id, req.agent_id, need) * self.page_size  # type: ignore[union-attr]

    def forget(self, st: ReqState) -> None:
        """``st`` left the waiting queue without being admitted (abort): drop its wait lock."""
        if self._waits is not None:
            self._waits.forget(st)

    def holds_wait(self, st: ReqState) -> bool:
        """Whether ``st`` waits with its matched prefix locked (a load for it queued or landed)."""
        return self._waits is not None and st in self._waits

    def drop_waits(self) -> None:
        """Unlock every waiting request's matched prefix (``LoadWaits.drop_all``)."""
        if self._waits is not None:
            self._waits.drop_all()

    @property
    def num_waiting_for_loads(self) -> int:
        return 0 if self._waits is None else len(self._waits)

    def ensure(self, st: ReqState, num_tokens: int) -> bool:
        """Make ``st``'s page table cover its next ``num_tokens`` tokens, evicting cache if needed."""
        need = -(-(st.computed + num_tokens) // self.page_size) - len(st.page_table)
        if need <= 0:
            return True
        pages = self._alloc(need)
        if pages is None:
            return False
        st.page_table.extend(pages)
        self.in_use += need
        return True

    def _alloc(self, n: int) -> list[int] | None:
        """``n`` pages (evicting cache); short of room, protected prefetches give way, least urgent first."""
        if self.cache is None:
            return self.pool.alloc(n)
        pages = self.cache.alloc_device(n)
        while pages is None and self.loader is not None and self.loader.release_for_alloc():
            pages = self.cache.alloc_device(n)
        return pages

    # ---------------------------------------------------------------- sharing and release
    def share(self, st: ReqState) -> None:
        """Hand ``st``'s computed whole pages to the cache now (other requests can reuse them while
        it keeps running); its page table switches to the tree's pages."""
        if not self._has_new_pages(st):
            return
        tree, node = self._insert(st)
        self.cache.lock(node)  # type: ignore[union-attr]
        if st.node is not None:
            self.cache.unlock(st.node)  # type: ignore[union-attr]
        st.node = node
        self._adopt(st, tree)

    def release(self, st: ReqState) -> None:
        """Give back every page ``st`` holds: computed whole pages go to the cache, the rest are freed."""
        node = st.node
        if self._has_new_pages(st):
            tree, node = self._insert(st)
            self._adopt(st, tree)
        if node is not None and self.on_insert is not None:
            self.on_insert(st, node)
        own = st.own_pages
        if own:
            self.pool.free(own)
            self.in_use -= len(own)
        if st.node is not None:
            self.cache.unlock(st.node)  # type: ignore[union-attr]
        self._set_shared(st, [])
        st.page_table = []
        st.node = None
        st.computed = 0

    def _has_new_pages(self, st: ReqState) -> bool:
        return self.cache is not None and st.computed // self.page_size > st.shared_pages

    def _insert(self, st: ReqState) -> tuple[list[int], RadixNode]:
        assert self.cache is not None
        full = st.computed // self.page_size
        res = self.cache.insert(st.all_ids[:full * self.page_size], st.page_table[:full],
                                agent_id=cache_tag(st))
        return res.pages, res.node

    def _adopt(self, st: ReqState, tree: list[int]) -> None:
        """Point ``st.page_table[:len(tree)]`` at the tree's pages and free the own pages that the
        tree already had a copy of; those pages all leave the in-use count."""
        table = st.page_table
        assert table[:st.shared_pages] == tree[:st.shared_pages], "shared prefix pages moved"
        redundant = []
        for i in range(st.shared_pages, len(tree)):
            if table[i] != tree[i]:
                redundant.append(table[i])
                table[i] = tree[i]
        if redundant:
            self.pool.free(redundant)
        self.in_use -= len(tree) - st.shared_pages
        self._set_shared(st, tree)

    def _set_shared(self, st: ReqState, shared: list[int]) -> None:
        old = st.page_table[:st.shared_pages]
        self._locked.subtract(old)
        for p in old:
            if self._locked[p] <= 0:
                del self._locked[p]
        self._locked.update(shared)
        st.shared_pages = len(shared)

    # ---------------------------------------------------------------- accounting
    def shared_page_ids(self) -> list[int]:
        """Ids of the cached pages that running requests reuse (each once)."""
        return list(self._locked)

    @property
    def locked_pages(self) -> int:
        """Distinct cached pages that running requests reuse (not evictable now)."""
        return len(self._locked)

    @property
    def held_fraction(self) -> float:
        """Fraction of the device pool that eviction cannot reclaim now."""
        cap = self.pool.capacity
        return min(1.0, (self.in_use + self.locked_pages) / cap) if cap else 0.0

    def check(self) -> None:
        """Assert free + cached + in-use == total (and the cache's own invariants)."""
        if self.cache is not None:
            self.cache.check(external_device_pages=self.in_use)
        else:
            self.pool.check()
            assert self.pool.num_free + self.in_use == self.pool.capacity, (
                f"free {self.pool.num_free} + in-use {self.in_use} != total {self.pool.capacity}")
