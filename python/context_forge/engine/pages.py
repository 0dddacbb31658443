"""Where every KV page is, by state: the breakdown `/metrics` shows an operator.

Each device page is in exactly one state:

- ``free``: on the pool's free list;
- ``cached``: held by the radix tree, used by no running request, no load landing into it (what
  eviction may reclaim, unless a queued request waiting for a load pins it);
- ``in_use``: a running request's own pages, plus tree pages that a running request reuses;
- ``loading``: tree pages a host-to-device load (prefetch or on-demand) is still copying into.

so ``free + cached + in_use + loading == capacity``. A warm idle server has ``in_use == 0``; a
leak shows as ``in_use`` (or ``loading``) that stays above 0 once nothing runs. Host pages are a
separate pool: ``host_cached`` hold KV (a copy of device pages or the only copy), the rest are free.
"""

from __future__ import annotations

from dataclasses import dataclass

from context_forge.kv.pool import PagePool

from .kv_manager import KVManager

DEVICE_STATES = ("free", "cached", "in_use", "loading")
HOST_STATES = ("cached", "free")


@dataclass(frozen=True)
class PageStates:
    """Device and host page counts by state, read in one consistent snapshot."""

    free: int
    cached: int
    in_use: int
    loading: int
    capacity: int
    host_cached: int = 0
    host_free: int = 0
    host_capacity: int = 0

    def device(self) -> dict[str, int]:
        """{state: pages} over `DEVICE_STATES`."""
        return {s: getattr(self, s) for s in DEVICE_STATES}

    def host(self) -> dict[str, int]:
        """{state: pages} over `HOST_STATES` (empty without a host tier)."""
        if not self.host_capacity:
            return {}
        return {"cached": self.host_cached, "free": self.host_free}

    def check(self) -> None:
        """Assert free + cached + in_use + loading == capacity (and the host pool adds up)."""
        total = self.free + self.cached + self.in_use + self.loading
        assert total == self.capacity and min(self.device().values()) >= 0, (
            f"device pages: free {self.free} + cached {self.cached} + in_use {self.in_use} + loading "
            f"{self.loading} = {total} != capacity {self.capacity}")
        assert self.host_cached + self.host_free == self.host_capacity, (
            f"host pages: cached {self.host_cached} + free {self.host_free} != capacity {self.host_capacity}")


def page_states(kv: KVManager, host_pool: PagePool | None) -> PageStates:
    """The breakdown now; the caller holds the engine lock (walks the radix tree once)."""
    pool = kv.pool
    cache = kv.cache
    loading: set[int] = set()
    cached_total = 0
    if cache is not None:
        cached_total = cache.device_cached_pages
        for node in cache.nodes():
            if node.is_loading and node.device_pages is not None:
                loading.update(node.device_pages)
    reused = sum(1 for p in kv.shared_page_ids() if p not in loading)
    host_cached = host_pool.num_used if host_pool is not None else 0
    return PageStates(
        free=pool.num_free,
        cached=cached_total - len(loading) - reused,
        in_use=kv.in_use + reused,
        loading=len(loading),
        capacity=pool.capacity,
        host_cached=host_cached,
        host_free=host_pool.num_free if host_pool is not None else 0,
        host_capacity=host_pool.capacity if host_pool is not None else 0,
    )
