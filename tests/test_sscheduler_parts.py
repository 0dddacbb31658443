"""SScheduler parts that need no server: targets' metadata, statistics, bounded concurrency (real
asyncio time with short sleeps), trace declarations and URL handling."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.sglang.metadata import parse_custom_params
from context_forge.trace.reader import parse_trace
from sscheduler import Agent, Workflow, make_target, percentile, target_names
from sscheduler.calls import normalize_base_url
from sscheduler.control import WorkflowControl
from sscheduler.progress import bounded_map
from sscheduler.replay import RequestRecord, declared_graph
from sscheduler.stats import summarize
from sscheduler.targets import SGLangTarget, Target

CHAIN = Workflow("chain", [Agent("a"), Agent("b", depends_on=["a"]), Agent("c", depends_on=["b"])])


def target(name: str) -> Target:
    """Targets without a server: only the context_forge target would use this (unreachable) control."""
    return make_target(name, WorkflowControl("http://127.0.0.1:9/v1", httpx.AsyncClient()))


def test_target_registry() -> None:
    assert set(target_names()) >= {"context_forge", "sglang", "openai"}
    with pytest.raises(ValueError, match="unknown target 'vllm'.*context_forge"):
        target("vllm")


def test_sglang_target_sends_each_instance_its_upcoming_steps() -> None:
    async def scenario() -> list[dict[str, Any]]:
        t = target("sglang")
        sent = []
        await t.instance_started("i1", CHAIN.graph)
        sent.append(await t.before_request("i1", "a"))
        await t.after_request("i1", "a")
        await t.instance_started("i2", CHAIN.graph)
        sent.append(await t.before_request("i2", "a"))
        sent.append(await t.before_request("i1", "b"))
        await t.after_request("i1", "b")
        sent.append(await t.before_request("i1", "c", final=True))
        await t.after_request("i1", "c")
        await t.instance_finished("i1")
        sent.append(await t.before_request("dyn", "x"))
        await t.after_request("dyn", "x")
        return [s["custom_params"] for s in sent]

    first, other, second, last, dynamic = asyncio.run(scenario())
    assert first == {"workflow_id": "i1", "agent_id": "a", "upcoming": {"a": 0, "b": 1, "c": 2}}
    assert other["upcoming"] == {"a": 0, "b": 1, "c": 2}  # i2 is at its own start
    assert second["upcoming"] == {"b": 0, "c": 1}
    assert last == {"workflow_id": "i1", "agent_id": "c", "upcoming": {"c": 0}, "final": True}
    assert parse_custom_params(last) is not None  # the plugin's own parser accepts it
    assert dynamic == {"workflow_id": "dyn", "agent_id": "x"}


def test_sglang_target_skips_and_rounds() -> None:
    wf = Workflow("w", [Agent("a"), Agent("opt", depends_on=["a"], optional=True), Agent("z", depends_on=["opt"])])
    loop = Workflow("loop", CHAIN.agents, repeat=True)

    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        t = target("sglang")
        assert isinstance(t, SGLangTarget)
        await t.instance_started("i", wf.graph)
        await t.before_request("i", "a")
        await t.after_request("i", "a")
        await t.agent_skipped("i", "opt")
        await t.instance_started("r", loop.graph)
        for agent in ("a", "b", "c"):
            await t.before_request("r", agent)
            await t.after_request("r", agent)
        return t.upcoming("i"), t.upcoming("r")

    after_skip, next_round = asyncio.run(scenario())
    assert after_skip == {"z": 0}
    assert next_round == {"a": 0, "b": 1, "c": 2}  # a repeat instance starts its next round


def test_openai_and_context_forge_metadata() -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        plain, ours = target("openai"), target("context_forge")
        await plain.instance_started("i", CHAIN.graph)
        await ours.instance_started("dyn", None)  # a dynamic workflow is never declared: no HTTP call
        return await plain.before_request("i", "a"), await ours.before_request("dyn", "x")

    plain, ours = asyncio.run(scenario())
    assert plain == {}
    assert ours == {"workflow": {"workflow_id": "dyn", "agent_id": "x"}}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_properties(values: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert min(values) <= percentile(values, lo) <= percentile(values, hi) <= max(values)
    assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)


def test_percentile_interpolates_and_rejects_bad_input() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([10.0, 20.0], 99) == pytest.approx(19.9)
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def _rec(latency: float, ttft: float | None, prompt: int, cached: int) -> RequestRecord:
    return RequestRecord(
        request_id="r", workflow_id="w", agent_id="a", due_s=0.0, sent_s=0.5,
        first_token_s=None if ttft is None else 0.5 + ttft, finished_s=0.5 + latency,
        prompt_tokens=prompt, cached_tokens=cached, completion_tokens=1,
    )


def test_summary_keys_and_values() -> None:
    s = summarize([_rec(1.0, 0.5, 10, 4), _rec(3.0, 1.5, 20, 0)], makespan_s=4.0)
    d = s.to_dict()
    assert list(d) == [
        "requests", "makespan_s", "mean_latency_s", "p50_latency_s", "p99_latency_s", "mean_ttft_s",
        "prompt_tokens", "cached_tokens", "completion_tokens",
    ]
    assert (d["mean_latency_s"], d["p50_latency_s"], d["mean_ttft_s"]) == (2.0, 2.0, 1.0)
    assert d["p99_latency_s"] == pytest.approx(2.98)
    assert (d["prompt_tokens"], d["cached_tokens"], d["requests"]) == (30, 4, 2)
    no_ttft = summarize([_rec(1.0, None, 1, 0)], 1.0)
    assert math.isnan(no_ttft.mean_ttft_s) and no_ttft.to_dict()["mean_ttft_s"] is None


def test_bounded_map_limits_concurrency_and_keeps_order() -> None:
    running = 0
    peak = 0
    done = []

    def job(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01 * (i % 3))
            running -= 1
            return i * i

        return run

    results = asyncio.run(bounded_map((job(i) for i in range(12)), 3, lambda: done.append(1)))
    assert results == [i * i for i in range(12)]
    assert peak == 3 and len(done) == 12
    assert asyncio.run(bounded_map([], 2)) == []
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(bounded_map([], 0))


def test_bounded_map_fails_fast_and_cancels_the_rest() -> None:
    finished = []

    async def slow() -> None:
        await asyncio.sleep(5)
        finished.append("slow")

    async def bad() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(RuntimeError, match="boom"):
            await bounded_map([slow, bad, slow], 3)
        return loop.time() - t0

    assert asyncio.run(scenario()) < 2 and finished == []


def test_trace_workflows_with_repeated_agents_are_declared_repeating() -> None:
    def req(rid: str, wf: str, agent: str, after: list[str]) -> dict[str, object]:
        return {"type": "request", "id": rid, "workflow_id": wf, "agent_id": agent, "after": after,
                "prompt": [{"segment": "s", "tokens": 4}], "output_tokens": 1}

    records = [
        {"type": "workflow", "workflow_id": "loop",
         "agents": [{"agent_id": "p"}, {"agent_id": "e", "depends_on": ["p"]}]},
        {"type": "workflow", "workflow_id": "once", "agents": [{"agent_id": "p"}]},
        req("1", "loop", "p", []), req("2", "loop", "e", ["1"]), req("3", "loop", "p", ["2"]),
        req("4", "once", "p", []), req("5", "dyn", "p", []),
    ]
    lines = [json.dumps(r) for r in records]
    trace = parse_trace(lines)
    loop = declared_graph(trace, "loop")
    assert loop is not None and loop.repeat and loop.order == ("p", "e")
    once = declared_graph(trace, "once")
    assert once is not None and not once.repeat
    assert declared_graph(trace, "dyn") is None


@pytest.mark.parametrize(
    "given_url, expected",
    [
        ("http://127.0.0.1:30000", "http://127.0.0.1:30000/v1"),
        ("http://127.0.0.1:30000/", "http://127.0.0.1:30000/v1"),
        ("http://127.0.0.1:30000/v1/", "http://127.0.0.1:30000/v1"),
        ("https://host/openai/v1", "https://host/openai/v1"),
    ],
)
def test_base_url_normalization(given_url: str, expected: str) -> None:
    assert normalize_base_url(given_url) == expected


def test_base_url_without_scheme_is_an_error() -> None:
    with pytest.raises(ValueError, match="http://"):
        normalize_base_url("127.0.0.1:30000")
