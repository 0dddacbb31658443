"""Prometheus text-format metrics without external dependencies.

`Counter`, `Gauge` and `Histogram` hold one value (or bucket set) per label-value combination and are
safe to update from the engine thread while the server renders them from its event loop. `Registry`
renders every registered metric in the Prometheus text exposition format (version 0.0.4).

`Metrics` declares every metric Context Forge exports. Who updates what:

- the engine loop: cache hits (`device_hit_tokens`, `host_hit_tokens`), `recomputed_tokens`,
  `evicted_pages`, `write_back_pages`, `load_backs`, `load_back_pages`, pool gauges, `pressure_mode`,
  `running_requests`, `waiting_requests`;
- the prefetch controller: the `prefetch_*` metrics;
- the HTTP server: per-request metrics (`requests`, `workflow_requests`, `prompt_tokens`,
  `cached_prompt_tokens`, `completion_tokens`, `aborted_requests`, `ttft_seconds`,
  `e2e_latency_seconds`). The engine must not update these, or they count twice.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

OVERFLOW_LABEL = "__overflow__"

_DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)


def format_value(value: float) -> str:
    """Formats a sample value the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`, integers bare)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    body = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values))
    return "{" + body + "}"


def _check_name(name: str, what: str) -> None:
    ok = name and (name[0].isalpha() or name[0] in "_:") and all(c.isalnum() or c in "_:" for c in name)
    if not ok:
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits, '_' and ':'")


class _Metric:
    """Shared bookkeeping: name, help, label names and the per-label-set children."""

    type_name = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), max_series: int = 1000):
        _check_name(name, "metric")
        for label in labelnames:
            _check_name(label, "label")
            if label == "le":
                raise ValueError("label name 'le' is reserved for histogram buckets")
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], object] = {}

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(
                f"metric {self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}"
            )
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in self._children and len(self._children) >= self.max_series:
            key = tuple(OVERFLOW_LABEL for _ in self.labelnames)
        return key

    def _lookup_key(self, labels: dict[str, object]) -> tuple[str, ...]:
        return tuple(str(labels.get(n)) for n in self.labelnames)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type_name}"]
        with self._lock:
            lines.extend(self._samples())
        return lines

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing value; by convention its name ends in `_total`."""

    type_name = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), max_series: int = 1000):
        super().__init__(name, help, labelnames, max_series)
        if not self.labelnames:
            self._children[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"counter {self.name} can only increase, got {amount}")
        with self._lock:
            key = self._key(labels)
            self._children[key] = self._children.get(key, 0.0) + amount  # type: ignore[operator]

    def value(self, **labels: object) -> float:
        with self._lock:
            return float(self._children.get(self._lookup_key(labels), 0.0))  # type: ignore[arg-type]

    def _samples(self) -> list[str]:
        return [
            f"{self.name}{_label_text(self.labelnames, k)} {format_value(v)}"  # type: ignore[arg-type]
            for k, v in self._children.items()
        ]


class Gauge(_Metric):
    """A value that goes up and down; an unlabelled gauge may instead read a callback at render time."""

    type_name = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), max_series: int = 1000):
        super().__init__(name, help, labelnames, max_series)
        self._function: Callable[[], float] | None = None
        if not self.labelnames:
            self._children[()] = 0.0

    def set(self, value: float, **labels: object) -> None:
        with self._lock:
            self._children[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        with self._lock:
            key = self._key(labels)
            self._children[key] = self._children.get(key, 0.0) + amount  # type: ignore[operator]

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)

    def set_function(self, fn: Callable[[], float]) -> None:
        """Reads the value from `fn()` at render time (unlabelled gauges only)."""
        if self.labelnames:
            raise ValueError(f"gauge {self.name} has labels; set_function needs an unlabelled gauge")
        self._function = fn

    def value(self, **labels: object) -> float:
        if self._function is not None:
            return float(self._function())
        with self._lock:
            return float(self._children.get(self._lookup_key(labels), 0.0))  # type: ignore[arg-type]

    def _samples(self) -> list[str]:
        if self._function is not None:
            return [f"{self.name} {format_value(float(self._function()))}"]
        return [
            f"{self.name}{_label_text(self.labelnames, k)} {format_value(v)}"  # type: ignore[arg-type]
            for k, v in self._children.items()
        ]


class _HistogramState:
    __slots__ = ("counts", "sum", "count")

    def __init__(self, n_buckets: int):
        self.counts = [0] * n_buckets
        self.sum = 0.0
        self.count = 0


class Histogram(_Metric):
    """Observations counted into cumulative `le` buckets, plus `_sum` and `_count`."""

    type_name = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = _DEFAULT_LATENCY_BUCKETS,
        max_series: int = 1000,
    ):
        super().__init__(name, help, labelnames, max_series)
        bounds = [float(b) for b in buckets]
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"histogram {name} buckets must be non-empty and strictly increasing")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.buckets = tuple(bounds)
        if not self.labelnames:
            self._children[()] = _HistogramState(len(self.buckets))

    def observe(self, value: float, **labels: object) -> None:
        if math.isnan(value):
            raise ValueError(f"histogram {self.name} cannot observe NaN")
        with self._lock:
            key = self._key(labels)
            state = self._children.get(key)
            if state is None:
                state = self._children[key] = _HistogramState(len(self.buckets))
            assert isinstance(state, _HistogramState)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    state.counts[i] += 1
                    break
            state.sum += value
            state.count += 1

    def count(self, **labels: object) -> int:
        with self._lock:
            state = self._children.get(self._lookup_key(labels))
            return state.count if isinstance(state, _HistogramState) else 0

    def _samples(self) -> list[str]:
        lines: list[str] = []
        for key, state in self._children.items():
            assert isinstance(state, _HistogramState)
            cumulative = 0
            for bound, n in zip(self.buckets, state.counts):
                cumulative += n
                labels = _label_text((*self.labelnames, "le"), (*key, format_value(bound)))
                lines.append(f"{self.name}_bucket{labels} {cumulative}")
            base = _label_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{base} {format_value(state.sum)}")
            lines.append(f"{self.name}_count{base} {state.count}")
        return lines


class Registry:
    """An ordered set of metrics with unique names."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def names(self) -> list[str]:
        """Names of the registered metrics, in registration order."""
        return list(self._metrics)

    def get(self, name: str) -> _Metric:
        try:
            return self._metrics[name]
        except KeyError:
            raise KeyError(f"no metric named {name!r}") from None

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Every metric Context Forge exports, named `context_forge_*`; `render()` gives the /metrics body.

    Pool gauges take a `pool` label (`device` or `host`); `device_pages` and `host_pages` take a
    `state` label (see `engine.pages`); `evicted_pages` takes a `tier` label
    (`device`: device pages dropped or written back, `host`: host pages dropped).
    `pressure_mode` holds the integer value of `memory.pressure.PressureMode`
    (0 relaxed, 1 normal, 2 pressure, 3 critical, 4 emergency).
    """

    def __init__(self, prefix: str = "context_forge", max_workflow_series: int = 1000):
        self.registry = Registry()
        p = prefix
        reg = self.registry.register

        def counter(name: str, help: str, labels: Sequence[str] = (), **kw: int) -> Counter:
            return reg(Counter(f"{p}_{name}", help, labels, **kw))  # type: ignore[return-value]

        def gauge(name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
            return reg(Gauge(f"{p}_{name}", help, labels))  # type: ignore[return-value]

        # Per-request (HTTP server).
        self.requests = counter(
            "requests_total", "Finished generation requests by endpoint and finish reason.",
            ("endpoint", "finish_reason"),
        )
        self.workflow_requests = counter(
            "workflow_requests_total", "Generation requests by workflow instance ('' when none).",
            ("workflow_id",), max_series=max_workflow_series,
        )
        self.prompt_tokens = counter("prompt_tokens_total", "Prompt tokens of finished requests.")
        self.cached_prompt_tokens = counter(
            "cached_prompt_tokens_total", "Prompt tokens served from the KV cache (device or host)."
        )
        self.completion_tokens = counter("completion_tokens_total", "Generated tokens.")
        self.aborted_requests = counter(
            "aborted_requests_total", "Requests aborted before finishing (client disconnects included)."
        )
        self.ttft_seconds: Histogram = reg(Histogram(  # type: ignore[assignment]
            f"{p}_ttft_seconds", "Time from receiving a request to its first generated token."
        ))
        self.e2e_latency_seconds: Histogram = reg(Histogram(  # type: ignore[assignment]
            f"{p}_e2e_latency_seconds",
            "Time from receiving a request to its last generated token (aborted requests excluded).",
        ))

        # KV cache (engine loop).
        self.device_hit_tokens = counter(
            "device_hit_tokens_total", "Prompt tokens whose KV was already on the device."
        )
        self.host_hit_tokens = counter(
            "host_hit_tokens_total", "Prompt tokens whose KV was found on the host tier and loaded back."
        )
        self.evicted_pages = counter("evicted_pages_total", "Pages evicted, by tier.", ("tier",))
        for tier in ("device", "host"):
            self.evicted_pages.inc(0, tier=tier)
        self.write_back_pages = counter("write_back_pages_total", "Device pages copied to the host tier.")
        self.recomputed_tokens = counter(
            "recomputed_tokens_total", "Prompt tokens prefilled (not found in any cache tier)."
        )
        self.load_backs = counter("load_backs_total", "On-demand host-to-device loads.")
        self.load_back_pages = counter("load_back_pages_total", "Pages moved by on-demand loads.")
        self.pool_used_pages = gauge(
            "pool_used_pages", "Pages not free, by pool (evictable cached pages included).", ("pool",)
        )
        self.pool_capacity_pages = gauge("pool_capacity_pages", "Pool capacity in pages.", ("pool",))
        self.device_pages = gauge(
            "device_pages",
            "Device KV pages by state (free, cached, in_use, loading; they sum to the capacity), "
            "read when /metrics is scraped.",
            ("state",),
        )
        self.host_pages = gauge(
            "host_pages", "Host KV pages by state (cached, free), read when /metrics is scraped.", ("state",)
        )
        self.pressure_mode = gauge(
            "pressure_mode", "Memory pressure mode: 0 relaxed, 1 normal, 2 pressure, 3 critical, 4 emergency."
        )
        self.running_requests = gauge("running_requests", "Requests in the running batch.")
        self.waiting_requests = gauge("waiting_requests", "Requests waiting for admission.")

        # Prefetch controller.
        self.prefetch_issued = counter("prefetch_issued_total", "Prefetches started.")
        self.prefetch_completed = counter("prefetch_completed_total", "Prefetches that finished loading.")
        self.prefetch_cancelled = counter("prefetch_cancelled_total", "Prefetches cancelled before finishing.")
        self.prefetch_wasted = counter(
            "prefetch_wasted_total", "Prefetched prefixes evicted again before any request used them."
        )
        self.prefetch_bytes = counter("prefetch_bytes_total", "Bytes copied host-to-device by prefetches.")
        self.prefetch_hit_tokens = counter(
            "prefetch_hit_tokens_total", "Prompt tokens found on the device because a prefetch had loaded them."
        )
        self.prefetch_stall_seconds = counter(
            "prefetch_stall_seconds_total", "Time requests waited for an in-flight prefetch to land."
        )
        self.prefetch_copy_seconds = counter(
            "prefetch_copy_seconds_total", "Copy-stream time of prefetch copies (with prefetch_bytes_total: GB/s)."
        )
        self.prefetch_decode_copy_bytes = counter(
            "prefetch_decode_copy_bytes_total", "Bytes of prefetch copies that ran while a decode step did."
        )
        self.prefetch_decode_copy_seconds = counter(
            "prefetch_decode_copy_seconds_total", "Time prefetch copies overlapped decode steps."
        )
        self.prefetch_released_unused = counter(
            "prefetch_released_unused_total",
            "Prefetch protections given up before their request came (replan, workflow end, no room).",
        )
        self.prefetch_over_budget = counter(
            "prefetch_over_budget_total", "Prefetches skipped: no room beside busy pages and the protection budget."
        )
        self.prefetch_protected_pages = gauge(
            "prefetch_protected_pages", "Device pages of landed prefetches protected until their request comes."
        )

        # Loader (every policy with the host tier).
        self.demand_loads = counter("demand_loads_total", "On-demand host-to-device loads queued by admissions.")
        self.load_back_bytes = counter("load_back_bytes_total", "Bytes copied host-to-device by on-demand loads.")
        self.load_back_seconds = counter(
            "load_back_seconds_total", "Copy-stream time of on-demand loads (with load_back_bytes_total: GB/s)."
        )
        self.load_stall_seconds = counter(
            "load_stall_seconds_total", "Time admitted requests waited for their prefix to land (any load)."
        )

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return self.registry.render()
