"""Latency statistics of a replay: percentiles and the summary that `sscheduler replay` prints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["ReplaySummary", "percentile", "summarize"]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) with linear interpolation between the closest ranks
    (rank `q/100 * (n-1)` of the sorted values), as numpy's default method."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    frac = rank - lo
    value = ordered[lo] + (ordered[hi] - ordered[lo]) * frac
    return min(max(value, ordered[lo]), ordered[hi])


class _Timed(Protocol):
    @property
    def latency_s(self) -> float: ...

    @property
    def ttft_s(self) -> float | None: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


@dataclass(frozen=True)
class ReplaySummary:
    """The numbers a replay reports; latencies are per request, from send to last chunk."""

    requests: int
    makespan_s: float
    mean_latency_s: float
    p50_latency_s: float
    p99_latency_s: float
    mean_ttft_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a NaN (no request streamed a token) becomes None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def summarize(records: Sequence[_Timed], makespan_s: float) -> ReplaySummary:
    if not records:
        raise ValueError("no request records to summarize")
    latencies = [r.latency_s for r in records]
    ttfts = [t for r in records if (t := r.ttft_s) is not None]
    return ReplaySummary(
        requests=len(records),
        makespan_s=makespan_s,
        mean_latency_s=sum(latencies) / len(latencies),
        p50_latency_s=percentile(latencies, 50),
        p99_latency_s=percentile(latencies, 99),
        mean_ttft_s=sum(ttfts) / len(ttfts) if ttfts else math.nan,
        prompt_tokens=sum(r.prompt_tokens for r in records),
        cached_tokens=sum(r.cached_tokens for r in records),
        completion_tokens=sum(r.completion_tokens for r in records),
    )
