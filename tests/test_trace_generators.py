"""Trace generators: each reads back, is deterministic per seed, and has its workload's shape."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from context_forge.trace import Trace, dump_trace, load_trace, parse_trace
from context_forge.trace.generators import GENERATORS, generate, main

# Small versions of every kind keep the file fast; defaults are exercised once via the CLI test.
SMALL: dict[str, dict] = {
    "peer": {"rounds": 3, "system_tokens": 300},
    "concurrent": {"workflows": 4, "rounds": 2, "system_tokens": 200},
    "fanout": {"workflows": 2, "rounds": 2, "width": 3},
    "dynamic": {"workflows": 6, "steps": 6},
    "simulation": {"agents": 20, "steps": 10, "active": 3},
}


def load(records: list[dict]) -> Trace:
    return parse_trace(json.dumps(r) for r in records)


def test_every_registered_kind_is_covered() -> None:
    """Every kind has small parameters here or in the recurring-shapes test file."""
    from test_trace_generators_recurring import SMALL as RECURRING

    assert set(GENERATORS) == set(SMALL) | set(RECURRING)
    assert not set(SMALL) & set(RECURRING)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_round_trip_and_determinism(kind: str, tmp_path: Path) -> None:
    records = generate(kind, seed=7, **SMALL[kind])
    assert records == generate(kind, seed=7, **SMALL[kind])
    assert records != generate(kind, seed=8, **SMALL[kind])
    path = tmp_path / f"{kind}.jsonl"
    dump_trace(records, path)
    trace = load_trace(path)
    assert trace.meta.name == f"{kind}-s7" and trace.meta.vocab_size == 32000
    assert len(trace.requests) == sum(r["type"] == "request" for r in records)
    assert all(r.prompt_len > 0 and r.output_tokens >= 1 for r in trace.requests)
    by_id = {r.id: r for r in trace.requests}
    for r in trace.requests:
        assert r.delay_s == 0 if r.is_root else r.arrival_s == 0
        assert all(by_id[a].line < r.line for a in r.after)


def test_vocab_size_and_name_flow_into_meta() -> None:
    trace = load(generate("peer", vocab_size=500, name="x", **SMALL["peer"]))
    assert trace.meta.vocab_size == 500 and trace.meta.name == "x"
    assert max(max(r.tokens(trace.vocab_size)) for r in trace.requests) < 500


def test_peer_is_one_declared_repeating_chain() -> None:
    trace = load(generate("peer", **SMALL["peer"]))
    assert list(trace.workflows) == ["peer-0"]
    graph = trace.workflows["peer-0"]
    assert graph.repeat and graph.order == ("planner", "executor", "expresser", "reviewer")
    assert [r.agent_id for r in trace.requests[:4]] == list(graph.order)
    assert len(trace.requests) == 12 and [r.step for r in trace.requests] == list(range(12))
    for prev, cur in pairwise(trace.requests):
        assert cur.after == (prev.id,)
    assert trace.repeating_workflows() == {"peer-0"}
    planners = [r for r in trace.requests if r.agent_id == "planner"]
    for a, b in pairwise(planners):
        assert a.prompt[0] == b.prompt[0] and a.prompt[0].tokens == 300
        shared = a.prompt_len - a.prompt[-1].tokens
        assert b.tokens(32000)[:shared] == a.tokens(32000)[:shared]


def test_concurrent_shares_some_agents_and_keeps_others_private() -> None:
    trace = load(generate("concurrent", **SMALL["concurrent"]))
    assert len(trace.workflows) == 4
    users: dict[str, set[str]] = {}
    for r in trace.requests:
        users.setdefault(r.agent_id, set()).add(r.workflow_id)
        assert r.prompt[0].name == f"sys/{r.agent_id}"
    shared = {a for a, wfs in users.items() if len(wfs) > 1}
    private = {a for a in users if "/" in a}
    assert shared and private
    assert all(len(users[a]) == 1 and a.startswith(next(iter(users[a])) + "/") for a in private)
    arrivals = sorted(r.arrival_s for r in trace.requests if r.is_root)
    assert len(arrivals) == 4 and arrivals[-1] > arrivals[0]
    assert trace.repeating_workflows() == set(trace.workflows)


def test_fanout_waits_for_all_workers() -> None:
    trace = load(generate("fanout", **SMALL["fanout"]))
    graph = trace.workflows["fan-0"]
    assert graph.depends_on("aggregator") == ("worker-0", "worker-1", "worker-2")
    aggs = [r for r in trace.requests if r.agent_id == "aggregator"]
    assert len(aggs) == 4 and all(len(a.after) == 3 for a in aggs)
    assert sorted(a.step for a in aggs) == [2, 2, 5, 5]
    workers = [r for r in trace.requests if r.workflow_id == "fan-0" and r.step == 1]
    assert len({r.prompt[:-1] for r in workers}) == 1
    assert max(r.step for r in trace.requests) == 5


def test_dynamic_has_no_workflow_records_and_follows_second_order_table() -> None:
    records = generate("dynamic", workflows=40, steps=12, determinism=1.0)
    assert not any(r["type"] == "workflow" for r in records)
    trace = load(records)
    assert trace.workflows == {} and all(trace.is_dynamic(w) for w in trace.workflow_ids())
    successor: dict[tuple, Counter] = {}
    for w in trace.workflow_ids():
        seq = [r.agent_id for r in trace.requests if r.workflow_id == w]
        state = (None, None)
        for agent in seq:
            successor.setdefault(state, Counter())[agent] += 1
            state = (state[1], agent)
            assert state[0] != state[1]
    assert all(len(c) == 1 for c in successor.values())
    first_order: dict[str, set] = {}
    for (_, last), c in successor.items():
        first_order.setdefault(last, set()).update(c)
    assert any(len(s) > 1 for s in first_order.values()), "table should need the second order"
    noisy = load(generate("dynamic", workflows=40, steps=12, determinism=0.5))
    assert [r.agent_id for r in noisy.requests] != [r.agent_id for r in trace.requests]


def test_simulation_sparse_zipf_activation() -> None:
    trace = load(generate("simulation", agents=50, steps=40, active=3))
    assert trace.workflows == {}
    by_step = Counter(r.step for r in trace.requests)
    assert set(by_step.values()) == {3} and len(by_step) == 40
    for r in trace.requests:
        assert r.prompt[0].name == "sim/world" and r.prompt[1].name == f"sys/{r.agent_id}"
        assert len({*r.after}) == (3 if r.step else 0)
    counts = Counter(r.agent_id for r in trace.requests).most_common()
    assert counts[0][1] >= 4 * counts[-1][1] and len(counts) < 50
    declared = load(generate("simulation", agents=50, steps=5, declare_graph=True))
    graph = declared.workflows["sim"]
    assert len(graph) == 50 and graph.repeat and graph.optional_agents == set(graph)


def test_history_is_compacted_past_the_limit() -> None:
    trace = load(generate("peer", rounds=30, system_tokens=100, history_limit=2000))
    assert max(r.prompt_len for r in trace.requests) < 100 + 2000 + 400
    assert any(s.name.startswith("peer-0/history.") for r in trace.requests for s in r.prompt)
    assert trace.working_set_tokens() > 2000


@pytest.mark.parametrize(
    ("kind", "params", "word"),
    [
        ("nope", {}, "unknown generator kind 'nope'"),
        ("peer", {"width": 3}, "unknown parameter 'width'"),
        ("peer", {"rounds": 0}, "'rounds' must be >= 1"),
        ("peer", {"rounds": 2.5}, "'rounds' must be int"),
        ("peer", {"rounds": True}, "'rounds' must be int"),
        ("concurrent", {"agents_per_workflow": 9}, "exceeds shared_agents"),
        ("dynamic", {"determinism": 1.5}, "determinism"),
        ("simulation", {"agents": 3, "active": 4}, "exceeds agents"),
    ],
)
def test_bad_parameters_are_named(kind: str, params: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        generate(kind, **params)


def test_cli_writes_a_readable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.jsonl"
    assert main(["simulation", "--out", str(out), "--seed", "3", "--declare-graph"]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# generated by context-forge-gen simulation --seed=3")
    assert "--declare-graph" in text.splitlines()[0]
    trace = load_trace(out)
    assert len(trace.requests) == 240 and "sim" in trace.workflows
    assert "240 requests" in capsys.readouterr().err
    assert main(["peer", "--out", str(out), "--rounds", "0"]) == 2
    assert "'rounds' must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_defaults_give_a_large_working_set(kind: str) -> None:
    trace = load(generate(kind))
    assert trace.working_set_tokens() > (50_000 if kind == "peer" else 120_000)
    assert max(r.prompt_len for r in trace.requests) < 16_000
