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
    "aborted_requests": "aborted_requests_total",
}
"""Name in the results -> sample key in ``/metrics`` without the ``context_forge_`` prefix."""


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


def cache_stats(delta: dict[str, float]) -> dict[str, Any]:
    """The curated per-replay cache numbers (0 where the server exports no such metric)."""
    stats: dict[str, Any] = {}
    for name, key in CACHE_STATS.items():
        value = delta.get(key, 0.0)
        stats[name] = round(value, 4) if name == "prefetch_stall_s" else round(value)
    return stats
