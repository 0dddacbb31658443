"""Scraping ``/metrics`` (Prometheus text format) and turning two scrapes into per-replay numbers.

Counters accumulate over a server's life, so a replay's numbers are the difference between a
scrape just before it and one just after. Gauges are reported as read after the replay;
histogram buckets are dropped (their ``_sum`` and ``_count`` are kept as counters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

PREFIX = "context_forge_"

CACHE_STATS: dict[str, str] = {
    "device_hit_tokens": "device_hit_tokens_total",
    "host_hit_tokens": "host_hit_tokens_total",
    "prefetch_hit_tokens": "prefetch_hit_tokens_total",
    "recomputed_tokens": "recomputed_tokens_total",
    "cached_prompt_tokens": "cached_prompt_tokens_total",
    "prompt_tokens": "prompt_tokens_total",
    "evicted_device_pages": 'evicted_pages_total{tier="device"}',
    "evicted_host_pages": 'evicted_pages_total{tier="host"}',
    "write_back_pages": "write_back_pages_total",
    "load_backs": "load_backs_total",
    "load_back_pages": "load_back_pages_total",
    "prefetch_issued": "prefetch_issued_total",
    "prefetch_completed": "prefetch_completed_total",
    "prefetch_cancelled": "prefetch_cancelled_total",
    "prefetch_wasted": "prefetch_wasted_total",
    "prefetch_bytes": "prefetch_bytes_total",
    "prefetch_stall_s": "prefetch_stall_seconds_total",
    "load_stall_s": "load_stall_seconds_total",
    "demand_loads": "demand_loads_total",
    "prefetch_released_unused": "prefetch_released_unused_total",
    "prefetch_over_budget": "prefetch_over_budget_total",
    "aborted_requests": "aborted_requests_total",
}
"""Name in the results -> sample key in ``/metrics`` without the ``context_forge_`` prefix."""

TIMING_STATS: dict[str, str] = {
    "load_back_seconds": "load_back_seconds_total",
    "load_back_bytes": "load_back_bytes_total",
    "prefetch_copy_seconds": "prefetch_copy_seconds_total",
    "prefetch_decode_copy_seconds": "prefetch_decode_copy_seconds_total",
    "prefetch_decode_copy_bytes": "prefetch_decode_copy_bytes_total",
}
"""Copy timings the bandwidth columns need; read when the server exports them (``None`` when not):
seconds the on-demand host->device loads took and their bytes, seconds the prefetch copies took,
and the bytes and seconds of prefetch copies that ran while a decode step did."""

SECONDS = {"prefetch_stall_s", "load_stall_s"}


@dataclass
class Scrape:
    """One ``/metrics`` reading: ``{'name{labels}': value}`` and ``{family: type}``."""

    samples: dict[str, float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def kind_of(self, key: str) -> str:
        name = key.split("{", 1)[0]
        if name in self.types:
            return self.types[name]
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and self.types.get(name[: -len(suffix)]) == "histogram":
                return "histogram" + suffix
        return "untyped"


def parse(text: str) -> Scrape:
    """Parses the Prometheus text exposition format (as ``context_forge.metrics`` renders it)."""
    out = Scrape()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                out.types[parts[2]] = parts[3]
            continue
        key, _, value = line.rpartition(" ")
        if not key:
            raise ValueError(f"malformed metrics line {raw!r}")
        out.samples[key] = float(value.replace("+Inf", "inf"))
    return out


def scrape(url: str, timeout_s: float = 10.0) -> Scrape:
    response = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout_s, trust_env=False)
    response.raise_for_status()
    return parse(response.text)


def difference(before: Scrape, after: Scrape) -> dict[str, dict[str, float]]:
    """``{"delta": counters and histogram sums/counts after - before, "gauges": gauges after}``,
    keys without the ``context_forge_`` prefix."""
    delta: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for key, value in after.samples.items():
        kind = after.kind_of(key)
        short = key.removeprefix(PREFIX)
        if kind == "gauge":
            gauges[short] = value
        elif kind in ("counter", "histogram_sum", "histogram_count", "untyped"):
            delta[short] = value - before.samples.get(key, 0.0)
    return {"delta": delta, "gauges": gauges}


def cache_stats(delta: dict[str, float], page_bytes: int = 0) -> dict[str, Any]:
    """The curated per-replay cache numbers (0 where the server exports no such metric), the copy
    timings (``None`` where it does not) and the bandwidths they give (GB/s, ``None`` without a
    timing): ``load_back_gbps`` (on-demand loads; bytes from ``load_back_bytes_total``, else
    ``load_back_pages x page_bytes``), ``prefetch_gbps`` and ``prefetch_decode_gbps``."""
    stats: dict[str, Any] = {}
    for name, key in CACHE_STATS.items():
        value = delta.get(key, 0.0)
        stats[name] = round(value, 4) if name in SECONDS else round(value)
    for name, key in TIMING_STATS.items():
        stats[name] = round(delta[key], 6) if key in delta else None
    if "load_stall_seconds_total" not in delta:  # an older server: its stall counter is the same sum
        stats["load_stall_s"] = stats["prefetch_stall_s"]
    load_bytes = stats["load_back_bytes"]
    if load_bytes is None and page_bytes:
        load_bytes = stats["load_back_pages"] * page_bytes
    stats["load_back_gb"] = None if load_bytes is None else round(load_bytes / 1e9, 4)
    stats["prefetch_gb"] = round(stats["prefetch_bytes"] / 1e9, 4)
    stats["load_back_gbps"] = _rate(load_bytes, stats["load_back_seconds"])
    stats["prefetch_gbps"] = _rate(stats["prefetch_bytes"], stats["prefetch_copy_seconds"])
    stats["prefetch_decode_gbps"] = _rate(stats["prefetch_decode_copy_bytes"], stats["prefetch_decode_copy_seconds"])
    return stats


def _rate(nbytes: float | None, seconds: float | None) -> float | None:
    if nbytes is None or not seconds or seconds <= 0:
        return None
    return round(nbytes / seconds / 1e9, 3)
