"""benchmarks/e2e_workflows.py without servers: the sweep's cells and traces, the radix-level
footprint, namespacing, server grouping, pool arithmetic, /metrics differences, the report's
ratios and verdicts, argument errors and the device plan (``--dry-run``).
tests/test_bench_e2e_smoke.py runs the whole pipeline on CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_support import ROOT, load_e2e_script, run_main
from context_forge.cache import policy_class, serving_policies
from context_forge.trace.tokens import segment_tokens
from e2e_bench import plan, prom, report
from e2e_bench.plan import FULL, SMOKE, Cell, CellPool, group_cells, kv_footprint
from e2e_bench.run import run_args, runs_from_registry


e2e_workflows = load_e2e_script("e2e_workflows")


def main(*args: str) -> int:
    return run_main(e2e_workflows, *args)


def request(prompt: list[tuple[str, int]], out: int = 4) -> dict:
    return {"type": "request", "prompt": [{"segment": s, "tokens": n} for s, n in prompt], "output_tokens": out}


# ----------------------------------------------------------------------------- footprint
def test_footprint_counts_each_agent_branch_of_a_shared_history() -> None:
    records = [request([("sys/a", 64), ("hist", 10), ("in0", 3)]),
               request([("sys/b", 64), ("hist", 10), ("in1", 3)]),
               request([("sys/a", 64), ("hist", 20), ("in2", 3)])]
    fp = kv_footprint(records)
    # sys/a + hist[:20] + in0 + in2 under a; sys/b + hist[:10] + in1 under b
    assert fp.working_set == (64 + 20 + 3 + 3) + (64 + 10 + 3)
    assert fp.new_tokens == (64 + 10 + 3) + (64 + 10 + 3) + (10 + 3)
    assert fp.warm_tokens == 128 and fp.prompt_tokens == 77 + 77 + 87 and fp.max_request == 87 + 4


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 6)), min_size=1, max_size=4),
                min_size=1, max_size=6))
def test_footprint_matches_a_token_trie(prompts: list[list[tuple[str, int]]]) -> None:
    vocab = 1 << 30  # no accidental shared tokens between differently named segments
    seen: set[tuple[int, ...]] = set()
    new = 0
    for prompt in prompts:
        tokens: list[int] = []
        for name, n in prompt:
            tokens += segment_tokens(name, n, vocab)
        prefixes = [tuple(tokens[:i]) for i in range(1, len(tokens) + 1)]
        new += sum(p not in seen for p in prefixes)
        seen.update(prefixes)
    fp = kv_footprint([request(p) for p in prompts])
    assert fp.working_set == len(seen) and fp.new_tokens == new


def test_full_profile_is_the_papers_regime() -> None:
    """Short new input (<= 5 % of the prompt once system prompts are cached), short outputs,
    and the three target cells first."""
    traces = {}
    for w in plan.WORKLOADS:
        for s in FULL.system_tokens:
            t = plan.prepare_trace(w, s, FULL, Path("/tmp/cf-e2e-test-traces"), 131072, 128256)
            traces[t.name] = t
            assert t.new_fraction <= 0.05, (t.name, t.new_fraction)
            assert 8 <= t.output_tokens / len(t.trace.requests) <= 32
            assert t.footprint.warm_tokens == s * (4 if w == "peer" else FULL.agents)
    assert len(traces["concurrent-8k"].trace.workflows) == 16 and not traces["dynamic-8k"].trace.workflows
    cells = [c.name for c in plan.all_cells(FULL)]
    assert cells[:3] == list(FULL.targets) and len(cells) == 18 == len(set(cells))
    assert {c.split("-")[1] for c in cells} == {"2k", "8k", "16k"} and {c.split("-")[2] for c in cells} == {"25", "50"}


def test_select_cells_by_name_glob_and_targets() -> None:
    names = [c.name for c in plan.select_cells(FULL, ["dynamic-*-50", "targets"])]
    assert names[:3] == list(FULL.targets) and set(names[3:]) == {"dynamic-2k-50", "dynamic-8k-50", "dynamic-16k-50"}
    with pytest.raises(ValueError, match="matches no cell"):
        plan.select_cells(FULL, ["peer-4k-25"])


def test_namespaces_keep_the_shape_and_share_no_tokens() -> None:
    t = plan.prepare_trace("concurrent", 64, SMOKE, Path("/tmp/cf-e2e-test-traces"), 4096, 259)
    a, b = plan.namespaced(t.records, "s0r0"), plan.namespaced(t.records, "s0r1")
    assert len(a.requests) == len(b.requests) == len(t.trace.requests)
    for x, y, orig in zip(a.requests, b.requests, t.trace.requests):
        assert x.id == f"s0r0.{orig.id}" and x.agent_id == f"s0r0.{orig.agent_id}"
        assert x.after == tuple(f"s0r0.{d}" for d in orig.after)
        assert [s.tokens for s in x.prompt] == [s.tokens for s in orig.prompt] and x.output_tokens == orig.output_tokens
        assert x.tokens(a.vocab_size)[:8] != y.tokens(b.vocab_size)[:8]
    graph = a.workflows[f"s0r0.{next(iter(t.trace.workflows))}"]
    assert all(a.agent_id.startswith("s0r0.") and all(d.startswith("s0r0.") for d in a.depends_on)
               for a in graph.agents)
    warm = plan.warm_prompts(a)
    assert len(warm) == SMOKE.agents and all(len(p) == 64 for p in warm)


def _pool(workload: str, wanted: int, low: int = 1) -> CellPool:
    return CellPool(Cell(workload, 1024, 0.25), 4 * wanted, wanted, low)


def test_grouping_joins_pools_within_tolerance_that_hold_the_largest_request() -> None:
    pools = [_pool("peer", 1000), _pool("concurrent", 1070), _pool("dynamic", 930, low=1001), _pool("peer", 2000)]
    groups = group_cells(pools, 0.08)
    assert [(g.pool_pages, [m.wanted_pages for m in g.members]) for g in groups] == [
        (1000, [1000, 1070]), (930, [930]), (2000, [2000])]


@settings(max_examples=200, deadline=None)
@given(host=st.integers(1, 10**6), device=st.integers(1, 10**5))
def test_hicache_ratio_gives_at_least_the_host_pages(host: int, device: int) -> None:
    ratio = float(plan.hicache_ratio(host, device))
    assert ratio > 1 and int(device * ratio) >= host


def test_runs_come_from_the_policy_registry() -> None:
    assert runs_from_registry() == [*serving_policies(), "unbounded"]
    for name in serving_policies():
        assert run_args(name) == {"radix_eviction_policy": name,
                                  "enable_prefetch": "true" if policy_class(name).prefetches else "false"}
    assert run_args("unbounded") == run_args("lru")


# ----------------------------------------------------------------------------- metrics
def test_metrics_difference_and_bandwidths() -> None:
    def text(hits: int, used: int, secs: float) -> str:
        return "\n".join([
            "# TYPE context_forge_device_hit_tokens_total counter", f"context_forge_device_hit_tokens_total {hits}",
            "# TYPE context_forge_pool_used_pages gauge", f'context_forge_pool_used_pages{{pool="device"}} {used}',
            "# TYPE context_forge_load_back_pages_total counter", f"context_forge_load_back_pages_total {hits}",
            "# TYPE context_forge_load_back_seconds_total counter", f"context_forge_load_back_seconds_total {secs}",
        ])
    diff = prom.difference(prom.parse(text(10, 5, 0.5)), prom.parse(text(1010, 3, 1.5)))
    assert diff["gauges"] == {'pool_used_pages{pool="device"}': 3}
    stats = prom.cache_stats(diff["delta"], page_bytes=2 << 20)
    assert stats["device_hit_tokens"] == 1000 and stats["load_back_gb"] == pytest.approx(1000 * 2 * 2**20 / 1e9, abs=1e-4)
    assert stats["load_back_gbps"] == pytest.approx(2.097, abs=1e-3)
    assert stats["prefetch_gbps"] is None and stats["prefetch_copy_seconds"] is None
    with pytest.raises(ValueError, match="malformed metrics line"):
        prom.parse("lonely_name_without_value")


def test_load_stall_and_protection_counters_reach_the_report() -> None:
    delta = {"load_stall_seconds_total": 0.25, "prefetch_stall_seconds_total": 0.25, "demand_loads_total": 3,
             "prefetch_released_unused_total": 2, "prefetch_over_budget_total": 5, "prefetch_issued_total": 10,
             "prefetch_bytes_total": 4e9, "prefetch_copy_seconds_total": 0.1,
             "prefetch_decode_copy_bytes_total": 2e9, "prefetch_decode_copy_seconds_total": 0.05}
    stats = prom.cache_stats(delta)
    assert (stats["load_stall_s"], stats["demand_loads"]) == (0.25, 3)
    assert (stats["prefetch_released_unused"], stats["prefetch_over_budget"]) == (2, 5)
    assert stats["prefetch_gbps"] == 40.0 and stats["prefetch_decode_gbps"] == 40.0
    old = prom.cache_stats({"prefetch_stall_seconds_total": 0.5})
    assert old["load_stall_s"] == 0.5, "an older server's stall counter stands in"
    results = _results({("lru", "peer-16k-25"): 10.0, ("kvflow", "peer-16k-25"): 5.0,
                        ("unbounded", "peer-16k"): 4.0}, cache=stats)
    assert report.stall_share(results["runs"][0]) == pytest.approx(0.025)
    table = "\n".join(report.loads_table(results))
    assert "| 2 / 5 | 3, " in table and "(40.0; 40.0)" in table


# ----------------------------------------------------------------------------- report
def _results(spans: dict[tuple[str, str], float], cache: dict | None = None) -> dict:
    cells = {"peer-16k-25": {"trace": "peer-16k", "workload": "peer", "fraction": 0.25, "system_tokens": 16384,
                             "pool_tokens": 100, "actual_fraction": 0.25},
             "concurrent-8k-25": {"trace": "concurrent-8k", "workload": "concurrent", "fraction": 0.25,
                                  "system_tokens": 8192, "pool_tokens": 100, "actual_fraction": 0.25},
             "dynamic-8k-25": {"trace": "dynamic-8k", "workload": "dynamic", "fraction": 0.25,
                               "system_tokens": 8192, "pool_tokens": 100, "actual_fraction": 0.25}}
    runs = []
    for (run, key), span in spans.items():
        trace = key if run == "unbounded" else cells[key]["trace"]
        runs.append({"run": run, "cell": None if run == "unbounded" else key, "trace": trace, "status": "ok",
                     "summary": {"makespan_s": span}, "cache": dict(cache or {})})
    runs.append({"run": "pbkv", "cell": "concurrent-8k-25", "trace": "concurrent-8k", "status": "failed", "error": "boom"})
    return {"version": 2, "runs_order": ["lru", "kvflow", "pbkv", "unbounded"], "cells": cells,
            "targets": ["peer-16k-25", "concurrent-8k-25", "dynamic-8k-25"], "runs": runs, "traces": {}}


def test_captured_fraction_and_ceiling() -> None:
    r = _results({("lru", "peer-16k-25"): 30.0, ("kvflow", "peer-16k-25"): 12.0, ("unbounded", "peer-16k"): 10.0})
    v = report.CellView(r, report.ok_runs(r), "peer-16k-25")
    assert v.speedup("kvflow") == pytest.approx(2.5) and v.ceiling() == pytest.approx(3.0)
    assert v.captured("kvflow") == pytest.approx(0.9)
    assert v.speedup("pbkv") is None and v.captured("pbkv") is None
    flat = _results({("lru", "peer-16k-25"): 10.0, ("kvflow", "peer-16k-25"): 10.0, ("unbounded", "peer-16k"): 9.95})
    assert report.CellView(flat, report.ok_runs(flat), "peer-16k-25").captured("kvflow") is None, "no headroom"


def test_target_verdicts_against_the_ceiling() -> None:
    r = _results({("lru", "peer-16k-25"): 20.0, ("kvflow", "peer-16k-25"): 10.0, ("unbounded", "peer-16k"): 9.0,
                  ("lru", "concurrent-8k-25"): 12.0, ("kvflow", "concurrent-8k-25"): 10.2,
                  ("unbounded", "concurrent-8k"): 10.0,
                  ("kvflow", "dynamic-8k-25"): 10.0, ("pbkv", "dynamic-8k-25"): 9.0, ("unbounded", "dynamic-8k"): 8.0},
                 cache={"prefetch_issued": 10, "prefetch_wasted": 1, "prefetch_stall_s": 0.1})
    rows = {row["cell"]: row for row in report.target_rows(r)}
    assert rows["peer-16k-25"]["verdict"] == "yes" and rows["peer-16k-25"]["value"] == pytest.approx(2.0)
    assert rows["concurrent-8k-25"]["verdict"].startswith("ceiling 1.20x is below the target; captured 0.90 >= 0.9: yes")
    assert rows["dynamic-8k-25"]["verdict"].endswith("captured 0.50 < 0.9: no")
    assert rows["peer-16k-25"]["wasted"] == pytest.approx(0.1) and rows["peer-16k-25"]["stall"] == pytest.approx(0.01)
    text = report.markdown(r)
    assert "| single PEER workflow, large prompts: kvflow + prefetch over lru | peer-16k-25 | 2.00x | 1.83x | 2.22x |" in text
    assert "| concurrent-8k-25 | pbkv | failed | boom |" in text and "## Speedup next to the ceiling" in text
    assert "not measured" in report.markdown(_results({}))


# ----------------------------------------------------------------------------- arguments and plan
@pytest.mark.parametrize("args, message", [
    (["--smoke", "--runs", "lru,fifo"], "unknown run fifo"),
    (["--smoke", "--runs", "lru,lru"], "run listed twice"),
    (["--smoke", "--cells", "peer-9k-25"], "matches no cell"),
    (["--smoke", "--vocab-size", "100000"], "exceeds the model's vocabulary"),
    (["--smoke", "--fractions", "0.25,2"], "fractions must be in (0, 1]"),
    (["--smoke", "--system-tokens", "64,x"], "is not a comma-separated list of int"),
    (["--smoke", "--time-budget-s", "0"], "--time-budget-s must be > 0"),
    (["--runs", "lru"], "--config is required"),
    (["--smoke", "--server-arg", "page_size=0"], "page_size: must be >= 1"),
    (["--smoke", "--server-arg", "no_such_key=1"], "unknown option '--no-such-key'"),
])
def test_bad_arguments_exit_2_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], message: str) -> None:
    assert main(*args, "--out", str(tmp_path), "--dry-run") == 2
    assert message in capsys.readouterr().err


def test_device_plan_puts_the_three_targets_on_one_server(tmp_path: Path) -> None:
    assert main("--config", str(ROOT / "configs" / "llama3-8b-h100.yaml"), "--out", str(tmp_path), "--dry-run") == 0
    results = json.loads((tmp_path / "e2e_results.json").read_text())
    first = results["groups"][0]
    assert set(FULL.targets) <= set(first["cells"])
    for name in FULL.targets:
        cell = results["cells"][name]
        assert abs(cell["actual_fraction"] - 0.25) <= 0.25 * FULL.group_tolerance + 0.01
        assert first["host_tokens"] >= 1.05 * results["traces"][cell["trace"]]["working_set_tokens"]
    assert sorted(results["cells"]) == sorted(c.name for c in plan.all_cells(FULL))
    assert results["page_bytes"] == 2 * 2**20  # Llama-3.1-8B: 32 layers x 8 KV heads x 128 x K,V x bf16 x 16 tokens
    assert not results["runs"]


def test_help_lists_every_profile_flag() -> None:
    """``--help`` renders (a literal ``%`` in a flag's help once crashed argparse's formatter)."""
    text = e2e_workflows.build_parser().format_help()
    for f in dataclasses.fields(plan.Profile):
        assert "--" + f.name.replace("_", "-") in text
    assert "+-50 %" in text
