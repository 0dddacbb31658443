"""Prometheus text rendering of context_forge.metrics: format, label escaping, histogram invariants."""

from __future__ import annotations

import math
import re
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.metrics import OVERFLOW_LABEL, Counter, Gauge, Histogram, Metrics, Registry

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of the exposition format: every line is a comment or a well-formed sample."""
    assert text.endswith("\n")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    for line in text[:-1].split("\n"):  # the format separates lines by \n only
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram")
            assert name not in types, f"duplicate TYPE for {name}"
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        assert any(name == t or name.startswith(t + "_") for t in types), f"{name} has no TYPE line"
        key = (name, tuple(_LABEL.findall(labels)))
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(value.replace("+Inf", "inf"))
    return samples


def test_every_declared_metric_renders_and_parses() -> None:
    m = Metrics()
    m.requests.inc(endpoint="chat", finish_reason="stop")
    m.workflow_requests.inc(workflow_id="wf-1")
    m.evicted_pages.inc(3, tier="device")
    m.pool_used_pages.set(7, pool="device")
    m.pressure_mode.set(2)
    m.ttft_seconds.observe(0.2)
    m.prefetch_bytes.inc(4096)
    s = parse(m.render())
    assert s[("context_forge_requests_total", (("endpoint", "chat"), ("finish_reason", "stop")))] == 1
    assert s[("context_forge_workflow_requests_total", (("workflow_id", "wf-1"),))] == 1
    assert s[("context_forge_evicted_pages_total", (("tier", "device"),))] == 3
    assert s[("context_forge_pool_used_pages", (("pool", "device"),))] == 7
    assert s[("context_forge_pressure_mode", ())] == 2
    assert s[("context_forge_ttft_seconds_count", ())] == 1
    assert s[("context_forge_prefetch_bytes_total", ())] == 4096
    for name in ("issued", "completed", "cancelled", "wasted", "stall_seconds"):
        assert s[(f"context_forge_prefetch_{name}_total", ())] == 0
    for name in ("device_hit_tokens", "host_hit_tokens", "recomputed_tokens", "write_back_pages", "load_backs",
                 "load_back_pages"):
        assert s[(f"context_forge_{name}_total", ())] == 0


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_label_values_are_escaped(value: str) -> None:
    c = Counter("x_total", "help with \\ and\nnewline", ("name",))
    c.inc(name=value)
    reg = Registry()
    reg.register(c)
    text = reg.render()
    assert "\nnewline" not in text
    ((_, labels),) = [k for k in parse(text)]
    escaped = labels[0][1]
    unescaped = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), escaped)
    assert unescaped == value


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), max_size=40))
def test_histogram_buckets_are_cumulative_and_consistent(values: list[float]) -> None:
    h = Histogram("lat_seconds", "latency", buckets=(0.1, 1.0, 10.0))
    for v in values:
        h.observe(v)
    reg = Registry()
    reg.register(h)
    s = parse(reg.render())
    counts = [s[("lat_seconds_bucket", (("le", le),))] for le in ("0.1", "1", "10", "+Inf")]
    assert counts == sorted(counts)
    assert counts[-1] == len(values) == s[("lat_seconds_count", ())]
    assert counts[0] == sum(v <= 0.1 for v in values)
    assert math.isclose(s[("lat_seconds_sum", ())], sum(values), rel_tol=1e-9, abs_tol=1e-6)


def test_gauge_function_and_special_values() -> None:
    g = Gauge("free_pages", "free")
    g.set_function(lambda: 41.5)
    inf = Gauge("limit", "limit")
    inf.set(math.inf)
    reg = Registry()
    reg.register(g)
    reg.register(inf)
    text = reg.render()
    assert "free_pages 41.5\n" in text
    assert "limit +Inf\n" in text


def test_series_cap_folds_new_label_values_into_overflow() -> None:
    c = Counter("wf_total", "per workflow", ("workflow_id",), max_series=2)
    for wf in ("a", "b", "c", "d"):
        c.inc(workflow_id=wf)
    assert c.value(workflow_id="a") == 1
    assert c.value(workflow_id=OVERFLOW_LABEL) == 2


def test_concurrent_increments_are_not_lost() -> None:
    c = Counter("n_total", "n")

    def work() -> None:
        for _ in range(2000):
            c.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value() == 8000


def test_bad_use_raises_clear_errors() -> None:
    c = Counter("c_total", "c", ("endpoint",))
    with pytest.raises(ValueError, match="can only increase"):
        c.inc(-1, endpoint="x")
    with pytest.raises(ValueError, match=r"takes labels \['endpoint'\]"):
        c.inc(1, wrong="x")
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("bad name", "x")
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "h", ("le",))
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("h", "h", buckets=(1.0, 1.0))
    with pytest.raises(ValueError, match="needs an unlabelled gauge"):
        Gauge("g", "g", ("pool",)).set_function(lambda: 1.0)
    reg = Registry()
    reg.register(Counter("dup_total", "d"))
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Counter("dup_total", "d"))
