"""What the simulator measures, and the JSON object it prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from context_forge.cache.policy import policy_class

if TYPE_CHECKING:
    from context_forge.cache import RadixCache


@dataclass
class SimResult:
    """One simulated run. Token counts are summed over requests.

    ``prompt_tokens`` = sum of prompt lengths; ``device_hit_tokens`` were on the device at admission
    (including prefetched KV, arrived or still arriving); ``host_hit_tokens`` were on the host only;
    ``loaded_tokens`` were loaded back on demand; ``recomputed_tokens`` were computed by prefill
    (prompt_tokens = device_hit_tokens + loaded_tokens + recomputed_tokens);
    ``prefetched_tokens`` were loaded ahead of time, ``prefetch_wasted_tokens`` of them evicted or
    left unused; ``stall_s`` is GPU time spent waiting for host->device transfers.
    """

    policy: str
    requests: int
    prompt_tokens: int
    device_hit_tokens: int
    host_hit_tokens: int
    recomputed_tokens: int
    loaded_tokens: int
    prefetched_tokens: int
    prefetch_wasted_tokens: int
    prefetch_hit_tokens: int
    stall_s: float
    makespan_s: float
    mean_latency_s: float
    p99_latency_s: float
    mean_ttft_s: float
    device_tokens: int
    host_tokens: int
    page_size: int
    load_ahead_step: int
    evicted_device_pages: int
    written_back_pages: int
    sim_wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class StatsCollector:
    def __init__(self, policy: str, n: int) -> None:
        self.policy = policy
        self.n = n
        self.prompt_tokens = self.device_hit = self.host_hit = self.loaded = self.recomputed = 0
        self.prefetched_tokens = self.prefetch_wasted_tokens = self.prefetch_hit_tokens = 0
        self.stall_s = 0.0
        self.loaded_tokens_time = 0.0
        self.latency = [0.0] * n
        self.ttft = [0.0] * n

    def admitted(self, prompt: int, device_hit: int, host_hit: int, loaded: int, recomputed: int,
                 prefetch_hit: int) -> None:
        self.prompt_tokens += prompt
        self.device_hit += device_hit
        self.host_hit += host_hit
        self.loaded += loaded
        self.recomputed += recomputed
        self.prefetch_hit_tokens += prefetch_hit

    def first_token(self, i: int, ttft: float) -> None:
        self.ttft[i] = ttft

    def finished(self, i: int, latency: float) -> None:
        self.latency[i] = latency

    def result(self, makespan: float, cache: "RadixCache", wall: float, cfg: Any) -> SimResult:
        n = max(self.n, 1)
        return SimResult(
            policy=self.policy, requests=self.n, prompt_tokens=self.prompt_tokens,
            device_hit_tokens=self.device_hit, host_hit_tokens=self.host_hit,
            recomputed_tokens=self.recomputed, loaded_tokens=self.loaded,
            prefetched_tokens=self.prefetched_tokens, prefetch_wasted_tokens=self.prefetch_wasted_tokens,
            prefetch_hit_tokens=self.prefetch_hit_tokens, stall_s=round(self.stall_s, 6),
            makespan_s=round(makespan, 6), mean_latency_s=round(sum(self.latency) / n, 6),
            p99_latency_s=round(percentile(self.latency, 0.99), 6),
            mean_ttft_s=round(sum(self.ttft) / n, 6),
            device_tokens=cfg.device_tokens, host_tokens=cfg.host_tokens, page_size=cfg.page_size,
            load_ahead_step=cfg.load_ahead_step if policy_class(cfg.policy).prefetches else 0,
            evicted_device_pages=cache.stats.device_evicted_pages,
            written_back_pages=cache.stats.written_back_pages, sim_wall_s=round(wall, 3))
