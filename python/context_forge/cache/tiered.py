"""Two-tier radix cache: device and host page pools, policy-ordered eviction, write-back, load-back.

Device residency is top-closed: a node on the device has its parent on the device too, so only
*device leaves* (on device, no child on device) are evicted from the device. Evicting one keeps a
host copy when host room allows (making room only by dropping host-only leaves that the policy
ranks as less valuable), otherwise drops it with its host-only subtree. Host eviction takes
host-only leaves and never drops a page that is still on the device.

Victims come from two heaps (device, host) of ``(key, seq, node)`` with lazy validation: a popped
entry whose node is no longer a candidate is skipped; one whose key changed is pushed back with
the current key. Keys change only on access, on structural change (insert, split, eviction of a child), and
when an agent's priority changes; the cache re-queues the affected nodes at those moments, so every live candidate always
has an entry whose key is no larger than its current key and the heap's minimum is exact.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from context_forge.kv.pool import PagePool
from context_forge.kv.transfer import CountingTransfer, KVTransfer

from .node import LoadTicket, RadixNode
from .policy import EvictionPolicy, LRUPolicy
from .radix import RadixTree

if TYPE_CHECKING:
    from context_forge.memory.pressure import ModeActions

WRITE_POLICIES = ("write_back", "write_through", "write_through_selective")


@dataclass
class LoadPlan:
    """A reserved host->device load: copy ``host_pages[i]`` to ``device_pages[i]``, then
    :meth:`RadixCache.finish_loading` ``(ticket, nodes)``."""

    nodes: list[RadixNode]
    host_pages: list[int]
    device_pages: list[int]
    ticket: LoadTicket
    tokens: int


@dataclass
class CacheStats:
    device_evicted_pages: int = 0
    dropped_pages: int = 0
    written_back_pages: int = 0
    host_evicted_pages: int = 0
    loaded_back_pages: int = 0


class RadixCache(RadixTree):
    """Radix prefix cache over a device page pool and an optional host page pool."""

    def __init__(
        self,
        page_size: int,
        device_pool: PagePool,
        host_pool: PagePool | None = None,
        policy: EvictionPolicy | None = None,
        transfer: KVTransfer | None = None,
        write_policy: str = "write_back",
        write_through_threshold: int = 2,
    ) -> None:
        super().__init__(page_size)
        if write_policy not in WRITE_POLICIES:
            raise ValueError(f"write_policy must be one of {WRITE_POLICIES}, got {write_policy!r}")
        self.device_pool = device_pool
        self.host_pool = host_pool
        self.policy = policy or LRUPolicy()
        self.usage.rules = type(self.policy).priority is not None
        self.transfer = transfer or CountingTransfer()
        self.write_policy = write_policy
        self.write_through_threshold = write_through_threshold
        self.stats = CacheStats()
        self.eager_write_back = False
        """Set by the pressure controller: back up every new node at insert time."""
        self.admission_limit = math.inf
        """Set by the pressure controller: new nodes less urgent than this are not cached."""
        self._dev_heap: list[tuple[tuple, int, RadixNode]] = []
        self._host_heap: list[tuple[tuple, int, RadixNode]] = []
        self._seq = itertools.count()

    # ---------------------------------------------------------------- candidates and heaps
    @staticmethod
    def _device_candidate(node: RadixNode) -> bool:
        return (node.lock_ref == 0 and node.parent is not None and not node.is_loading
                and node.is_device_leaf())

    @staticmethod
    def _host_candidate(node: RadixNode) -> bool:
        return (node.lock_ref == 0 and node.parent is not None and node.device_pages is None
                and not node.children and not node.is_loading)

    def _push(self, node: RadixNode) -> None:
        """Queue ``node`` if it is an eviction candidate, unless an entry with its current key is
        already queued (so re-ranking the same node twice adds no duplicate)."""
        if node.parent is None or node.lock_ref:
            return
        if node.device_pages is not None:
            if not node.is_device_leaf():
                return
            heap, tier = self._dev_heap, True
        elif not node.children:
            heap, tier = self._host_heap, False
        else:
            return
        key = self.policy.key(node)
        if node.queued == (tier, key):
            return
        node.queued = (tier, key)
        heapq.heappush(heap, (key, node.id, next(self._seq), node))

    def _pop(self, heap: list, tier: bool, is_candidate, limit: tuple | None = None) -> RadixNode | None:
        """The candidate with the smallest key (``None`` if none, or if it is not below ``limit``).

        Entries other than a node's latest (``node.queued``) are skipped; a node whose key grew
        since it was queued is re-queued with its current key."""
        key_of = self.policy.key
        while heap:
            key, _, _, node = heap[0]
            if node.queued != (tier, key):
                heapq.heappop(heap)
                continue
            if not is_candidate(node):
                heapq.heappop(heap)
                node.queued = None
                continue
            current = key_of(node)
            if current != key:
                heapq.heapreplace(heap, (current, node.id, next(self._seq), node))
                node.queued = (tier, current)
                continue
            if limit is not None and key >= limit:
                return None
            heapq.heappop(heap)
            node.queued = None
            return node
        return None

    def _refresh(self) -> None:
        """Re-queue nodes of agents whose priority changed; compact heaps full of stale entries."""
        for agent in self.policy.changed_agents():
            for node in list(self._agent_nodes.get(agent, ())):
                self._push(node)
        if len(self._dev_heap) + len(self._host_heap) > 4 * self.num_nodes + 4096:
            self._dev_heap, self._host_heap = [], []
            for node in self.nodes():
                node.queued = None
                self._push(node)

    # ---------------------------------------------------------------- tree hooks
    def _admit(self, node: RadixNode) -> bool:
        if self.admission_limit == math.inf:
            return True
        return self.policy.node_priority(node) <= self.admission_limit

    def _on_access(self, path: list[RadixNode]) -> None:
        for node in path:
            self._push(node)
        if self.write_policy == "write_through_selective":
            for node in path:
                if node.host_pages is None and node.device_pages is not None \
                        and node.hit_count >= self.write_through_threshold:
                    self._backup(node)

    def _on_insert(self, nodes: list[RadixNode]) -> None:
        eager = self.eager_write_back or self.write_policy == "write_through"
        for node in nodes:
            if eager and node.host_pages is None and node.device_pages is not None:
                self._backup(node)
            self._push(node)

    def _on_unlock(self, nodes: list[RadixNode]) -> None:
        for node in nodes:
            self._push(node)

    def _on_split(self, lower: RadixNode) -> None:
        self._push(lower)  # its first page changed: a key that depends on it (belady) changed too

    def _on_retag(self, node: RadixNode) -> None:
        self._push(node)

    # ---------------------------------------------------------------- tier moves
    def _backup(self, node: RadixNode) -> bool:
        """Give a device node a host copy; make room only from less valuable host-only leaves."""
        if self.host_pool is None or node.device_pages is None:
            return False
        n = len(node.device_pages)
        host = self.host_pool.alloc(n)
        if host is None:
            self._evict_host(n - self.host_pool.num_free, limit=self.policy.key(node))
            host = self.host_pool.alloc(n)
            if host is None:
                return False
        self.transfer.device_to_host(node.device_pages, host)
        node.host_pages = host
        self.host_cached_pages += n
        self.stats.written_back_pages += n
        return True

    def _evict_device_node(self, node: RadixNode) -> int:
        pages = node.device_pages
        assert pages is not None
        if node.host_pages is None:
            self._backup(node)
        node.device_pages = None
        self.device_pool.free(pages)
        self.device_cached_pages -= len(pages)
        self.stats.device_evicted_pages += len(pages)
        if node.host_pages is None:
            self._delete_subtree(node)
        else:
            self._push(node)
            self._push(node.parent)  # type: ignore[arg-type]
        return len(pages)

    def _delete_subtree(self, node: RadixNode) -> None:
        """Remove ``node`` and its (host-only) descendants, freeing every page they hold."""
        parent = node.parent
        assert parent is not None
        del parent.children[self._first_page(node.key, 0)]
        stack = [node]
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            if n.device_pages is not None:
                self.device_pool.free(n.device_pages)
                self.device_cached_pages -= len(n.device_pages)
                self.stats.dropped_pages += len(n.device_pages)
                n.device_pages = None
            if n.host_pages is not None:
                self.host_pool.free(n.host_pages)  # type: ignore[union-attr]
                self.host_cached_pages -= len(n.host_pages)
                self.stats.dropped_pages += len(n.host_pages)
                n.host_pages = None
            n.children = {}
            n.parent = None
            self._forget_node(n)
        self._push(parent)

    def evict_device(self, num_pages: int, limit: tuple | None = None) -> int:
        """Free at least ``num_pages`` device pages if possible; returns pages freed.

        With ``limit``, only nodes whose policy key is below it (less valuable) are evicted: a
        prefetch passes the key of what it loads so that it never displaces more urgent KV.
        """
        self._refresh()
        freed = 0
        while freed < num_pages:
            node = self._pop(self._dev_heap, True, self._device_candidate, limit)
            if node is None:
                break
            freed += self._evict_device_node(node)
        return freed

    def _evict_host(self, num_pages: int, limit: tuple | None = None) -> int:
        freed = 0
        while freed < num_pages:
            node = self._pop(self._host_heap, False, self._host_candidate, limit)
            if node is None:
                break
            freed += len(node.host_pages or ())
            self.stats.host_evicted_pages += len(node.host_pages or ())
            self._delete_subtree(node)
        return freed

    def evict_host(self, num_pages: int) -> int:
        """Free at least ``num_pages`` host pages from host-only leaves; returns pages freed."""
        if self.host_pool is None:
            return 0
        self._refresh()
        return self._evict_host(num_pages)

    def alloc_device(self, n: int, limit: tuple | None = None) -> list[int] | None:
        """Allocate ``n`` device pages, evicting cached nodes (below ``limit``) if needed;
        ``None`` (nothing taken) if impossible."""
        pages = self.device_pool.alloc(n)
        if pages is None:
            self.evict_device(n - self.device_pool.num_free, limit)
            pages = self.device_pool.alloc(n)
        return pages

    def host_only_suffix(self, node: RadixNode) -> list[RadixNode]:
        """The host-only nodes on the path root -> ``node`` (a suffix of the path), top-down."""
        out: list[RadixNode] = []
        while node.parent is not None and node.device_pages is None:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def begin_load(self, node: RadixNode, limit: tuple | None = None) -> LoadPlan | None:
        """Reserve device pages for the host-only part of the path to ``node`` without copying.

        The nodes get their device page ids at once and are marked loading with a fresh ticket
        (not evictable); the caller copies ``plan.host_pages`` -> ``plan.device_pages`` (e.g. on a
        copy stream) and then calls :meth:`finish_loading`. ``None`` when nothing is host-only or
        there is no room (with ``limit``: none without evicting more valuable nodes).
        """
        todo = self.host_only_suffix(node)
        if not todo:
            return None
        need = sum(len(n.host_pages or ()) for n in todo)
        self.lock(node)
        try:
            pages = self.alloc_device(need, limit)
        finally:
            self.unlock(node)
        if pages is None:
            return None
        host_pages: list[int] = []
        offset = 0
        ticket = LoadTicket()
        for n in todo:
            k = len(n.host_pages)  # type: ignore[arg-type]
            n.device_pages = pages[offset:offset + k]
            n.loading = ticket
            host_pages.extend(n.host_pages)  # type: ignore[arg-type]
            offset += k
        self.device_cached_pages += need
        self.stats.loaded_back_pages += need
        return LoadPlan(todo, host_pages, pages, ticket, need * self.page_size)

    def load_back(self, node: RadixNode, limit: tuple | None = None) -> int:
        """Bring the host-only part of the path to ``node`` onto the device now (synchronous
        copy through ``self.transfer``). Returns tokens loaded (0 when nothing was host-only or
        the device has no room even after eviction; see :meth:`begin_load` for ``limit``)."""
        plan = self.begin_load(node, limit)
        if plan is None:
            return 0
        self.transfer.host_to_device(plan.host_pages, plan.device_pages)
        self.finish_loading(plan.ticket, plan.nodes)
        return plan.tokens

    def apply_pressure(self, actions: ModeActions) -> None:
        """A pressure mode's cache actions (``memory.pressure.PressureTarget``): eager write-back,
        the admission limit, and eviction down to the mode's free-page target."""
        self.eager_write_back = actions.write_back_eager
        self.admission_limit = actions.admit_max_steps
        want = actions.free_pages(self.device_pool.capacity)
        if want > self.device_pool.num_free:
            self.evict_device(want - self.device_pool.num_free)

    def finish_loading(self, ticket: LoadTicket, nodes: Sequence[RadixNode]) -> None:
        ticket.done = True
        for node in nodes:
            if node.loading is ticket:
                node.loading = None
            self._push(node)

    # ---------------------------------------------------------------- invariants
    def check(self, external_device_pages: int | None = None) -> None:
        """Assert tree/pool invariants. ``external_device_pages``: device pages held outside the tree
        (running requests); when given, free + cached + in-use == capacity is checked exactly."""
        ps = self.page_size
        seen_dev: set[int] = set()
        seen_host: set[int] = set()
        dev_total = host_total = 0
        for node in self.nodes():
            parent = node.parent
            assert parent is not None and parent.children.get(self._first_page(node.key, 0)) is node, \
                f"{node!r} detached"
            assert len(node.key) > 0 and len(node.key) % ps == 0, f"{node!r} key not page aligned"
            k = len(node.key) // ps
            assert node.device_pages is not None or node.host_pages is not None, f"{node!r} holds no pages"
            assert parent.lock_ref >= node.lock_ref >= 0, f"{node!r} lock above its parent's"
            assert node.agents <= parent.agents or parent.parent is None, f"{node!r} agents not in parent"
            if node.device_pages is not None:
                assert len(node.device_pages) == k
                assert parent.parent is None or parent.device_pages is not None, f"{node!r} on device under host-only parent"
                for p in node.device_pages:
                    assert p not in seen_dev, f"device page {p} owned twice"
                    assert not self.device_pool.is_free(p), f"device page {p} cached but free"
                    seen_dev.add(p)
                dev_total += k
            if node.host_pages is not None:
                assert self.host_pool is not None and len(node.host_pages) == k
                for p in node.host_pages:
                    assert p not in seen_host, f"host page {p} owned twice"
                    assert not self.host_pool.is_free(p), f"host page {p} cached but free"
                    seen_host.add(p)
                host_total += k
            for agent in node.agents:
                assert node in self._agent_nodes.get(agent, ()), f"{node!r} missing from agent index"
        assert dev_total == self.device_cached_pages, "device page count drifted"
        assert host_total == self.host_cached_pages, "host page count drifted"
        self.device_pool.check()
        if self.host_pool is not None:
            self.host_pool.check()
            assert self.host_pool.num_used == host_total, "host pages held outside the tree"
        if external_device_pages is not None:
            assert self.device_pool.num_free + dev_total + external_device_pages == self.device_pool.capacity, (
                f"free {self.device_pool.num_free} + cached {dev_total} + in-use {external_device_pages}"
                f" != total {self.device_pool.capacity}")
