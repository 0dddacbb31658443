"""Every metric the engine loop updates, in one place (names come from ``context_forge.metrics``).

Per-request metrics (request counts, prompt/completion tokens, TTFT, end-to-end latency,
per-workflow counts) are the HTTP server's: it sees each request's outputs and updates them
itself, so the engine must not count them again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from context_forge.kv.pool import PagePool
from context_forge.cache.tiered import CacheStats, RadixCache
from context_forge.memory.pressure import PressureMode
from context_forge.metrics import Metrics
from context_forge.prefetch.ledger import PrefetchStats
from context_forge.prefetch.service import WorkflowPrefetcher

from .kv_manager import AdmitResult
from .pages import PageStates


@dataclass
class EngineCounters:
    """Running totals kept by the engine itself (also readable without Prometheus)."""

    device_hit_tokens: int = 0
    host_hit_tokens: int = 0
    recomputed_tokens: int = 0
    load_backs: int = 0
    preemptions: int = 0
    steps: int = 0
    prefetch_hit_tokens: int = 0
    """Prompt tokens found on the device because a prefetch had loaded them."""
    prefetch_stall_s: float = 0.0
    """Seconds admitted requests waited for their prefix to land (prefetch or on-demand load)."""


class EngineStats:
    """Feeds ``Metrics`` from admissions, steps and the cache's cumulative ``CacheStats``."""

    def __init__(self, metrics: Metrics, device_pool: PagePool, host_pool: PagePool | None,
                 cache: RadixCache | None, loader: WorkflowPrefetcher | None = None) -> None:
        self.metrics = metrics
        self.counters = EngineCounters()
        self._device_pool = device_pool
        self._host_pool = host_pool
        self._cache = cache
        self._seen = CacheStats()
        self._loader = loader
        self._prefetch = loader.stats if loader is not None else None
        self._seen_prefetch = PrefetchStats()
        metrics.pool_capacity_pages.set(device_pool.capacity, pool="device")
        if host_pool is not None:
            metrics.pool_capacity_pages.set(host_pool.capacity, pool="host")

    def on_admit(self, hit: AdmitResult) -> None:
        c, m = self.counters, self.metrics
        c.device_hit_tokens += hit.device_hit
        c.host_hit_tokens += hit.host_hit
        if hit.device_hit:
            m.device_hit_tokens.inc(hit.device_hit)
        if hit.host_hit:
            c.load_backs += 1
            m.host_hit_tokens.inc(hit.host_hit)
            m.load_backs.inc()
        c.prefetch_hit_tokens += hit.prefetch_hit
        if hit.prefetch_hit:
            m.prefetch_hit_tokens.inc(hit.prefetch_hit)
        if hit.stall_s > 0:
            c.prefetch_stall_s += hit.stall_s
            m.prefetch_stall_seconds.inc(hit.stall_s)
            m.load_stall_seconds.inc(hit.stall_s)

    def publish_pages(self, pages: PageStates) -> None:
        """Set the per-state page gauges (and the pool gauges) from one snapshot."""
        m = self.metrics
        for state, n in pages.device().items():
            m.device_pages.set(n, state=state)
        for state, n in pages.host().items():
            m.host_pages.set(n, state=state)
        m.pool_used_pages.set(pages.capacity - pages.free, pool="device")
        if pages.host_capacity:
            m.pool_used_pages.set(pages.host_capacity - pages.host_free, pool="host")

    def on_step(self, prefill_tokens: int, preempted: int, running: int, waiting: int,
                mode: PressureMode) -> None:
        c, m = self.counters, self.metrics
        c.steps += 1
        c.recomputed_tokens += prefill_tokens
        if prefill_tokens:
            m.recomputed_tokens.inc(prefill_tokens)
        c.preemptions += preempted
        m.running_requests.set(running)
        m.waiting_requests.set(waiting)
        m.pressure_mode.set(int(mode))
        m.pool_used_pages.set(self._device_pool.num_used, pool="device")
        if self._host_pool is not None:
            m.pool_used_pages.set(self._host_pool.num_used, pool="host")
        prefetched = self._prefetch_deltas() if self._prefetch is not None else 0
        if self._cache is not None:
            self._cache_deltas(self._cache.stats, prefetched)

    def _cache_deltas(self, now: CacheStats, prefetched_pages: int) -> None:
        seen, m = self._seen, self.metrics
        delta = {f.name: getattr(now, f.name) - getattr(seen, f.name) for f in fields(CacheStats)}
        if delta["device_evicted_pages"]:
            m.evicted_pages.inc(delta["device_evicted_pages"], tier="device")
        if delta["host_evicted_pages"]:
            m.evicted_pages.inc(delta["host_evicted_pages"], tier="host")
        if delta["written_back_pages"]:
            m.write_back_pages.inc(delta["written_back_pages"])
        on_demand = delta["loaded_back_pages"] - prefetched_pages  # the cache counts prefetches too
        if on_demand > 0:
            m.load_back_pages.inc(on_demand)
        for name, value in delta.items():
            setattr(seen, name, getattr(seen, name) + value)

    def _prefetch_deltas(self) -> int:
        """Export the prefetch controller's counters; returns pages prefetched since the last step."""
        now, seen, m = self._prefetch, self._seen_prefetch, self.metrics
        assert now is not None
        loader = self._loader
        assert loader is not None
        meter = loader.controller.copier.meter
        if meter is not None:
            meter.poll()
        delta = {f.name: getattr(now, f.name) - getattr(seen, f.name) for f in fields(PrefetchStats)}
        for name, metric in (("issued", m.prefetch_issued), ("completed", m.prefetch_completed),
                             ("cancelled", m.prefetch_cancelled), ("wasted", m.prefetch_wasted),
                             ("bytes", m.prefetch_bytes), ("copy_seconds", m.prefetch_copy_seconds),
                             ("decode_bytes", m.prefetch_decode_copy_bytes),
                             ("decode_seconds", m.prefetch_decode_copy_seconds),
                             ("released_unused", m.prefetch_released_unused),
                             ("over_budget", m.prefetch_over_budget), ("demand_loads", m.demand_loads),
                             ("demand_bytes", m.load_back_bytes), ("demand_seconds", m.load_back_seconds)):
            if delta[name] > 0:
                metric.inc(delta[name])
        m.prefetch_protected_pages.set(loader.protection.protected_pages)
        for name, value in delta.items():
            setattr(seen, name, getattr(seen, name) + value)
        return delta["pages"]
