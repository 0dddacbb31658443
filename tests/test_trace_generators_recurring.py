"""Recurring trace generators (template, rounds, tickets): they read back, are deterministic per
seed, and their sharing structure (shared system prompts, growing memories, routes) is real."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from context_forge.trace import Segment, Trace, TraceRequest, load_trace, parse_trace
from context_forge.trace.generators import GENERATORS, generate, main
from context_forge.trace.recurring import SPECIALISTS

SMALL: dict[str, dict] = {
    "template": {"instances": 6, "workers": 3, "system_tokens": 400, "rounds": 1},
    "rounds": {"agents": 30, "rounds": 8, "active": 4},
    "tickets": {"tickets": 12, "system_tokens": 300},
}


def load(records: list[dict]) -> Trace:
    return parse_trace(json.dumps(r) for r in records)


def by_workflow(trace: Trace) -> dict[str, list[TraceRequest]]:
    groups: dict[str, list[TraceRequest]] = defaultdict(list)
    for r in trace.requests:
        groups[r.workflow_id].append(r)
    return groups


def extends(a: TraceRequest, b: TraceRequest) -> bool:
    """``b``'s prompt starts with ``a``'s prompt up to ``a``'s own input."""
    shared = a.prompt_len - a.prompt[-1].tokens
    return b.tokens(32000)[:shared] == a.tokens(32000)[:shared]


def grows(a: TraceRequest, b: TraceRequest, history: str) -> bool:
    """``b`` reads ``history`` grown by ``a``'s input and output (``a`` read it or nothing)."""
    before = a.prompt[-2].tokens if a.prompt[-2].name == history else 0
    return b.prompt[-2] == Segment(history, before + a.prompt[-1].tokens + a.output_tokens)


def test_recurring_kinds_are_registered() -> None:
    assert set(SMALL) <= set(GENERATORS)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_deterministic_per_seed_and_readable(kind: str) -> None:
    seeds = [generate(kind, seed=seed, **SMALL[kind]) for seed in (5, 5, 6)]
    assert seeds[0] == seeds[1] != seeds[2]
    records = seeds[0]
    trace = load(records)
    assert trace.meta.name == f"{kind}-s5"
    assert len(trace.requests) == sum(r["type"] == "request" for r in records)
    by_id = {r.id: r for r in trace.requests}
    for r in trace.requests:
        assert r.prompt_len > 0 and r.output_tokens >= 1
        assert r.delay_s == 0 if r.is_root else r.arrival_s == 0
        assert all(by_id[a].line < r.line for a in r.after)
        graph = trace.workflows.get(r.workflow_id)
        assert (graph is None) == (kind == "tickets")
        assert graph is None or r.agent_id in graph
        assert r.prompt[-1].name == f"{r.id}/input"


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_defaults_are_large_but_bounded(kind: str) -> None:
    trace = load(generate(kind))
    assert trace.working_set_tokens() > 100_000
    assert max(r.prompt_len for r in trace.requests) < 16_000


def test_template_instances_share_one_graph_and_the_system_prompts() -> None:
    trace = load(generate("template", **SMALL["template"]))
    groups = by_workflow(trace)
    assert list(trace.workflows) == [f"tpl-{i}" for i in range(6)] == list(groups)
    graph = trace.workflows["tpl-0"]
    assert all(g.agents == graph.agents for g in trace.workflows.values())
    assert graph.order == ("planner", "worker-0", "worker-1", "worker-2", "reducer", "critic")
    assert graph.depends_on("reducer") == ("worker-0", "worker-1", "worker-2")
    system: dict[str, set] = defaultdict(set)
    for wid, reqs in groups.items():
        assert [r.agent_id for r in reqs] == list(graph.order)
        for r in reqs:
            preamble, sys, task = r.prompt[:3]
            assert preamble == trace.requests[0].prompt[0] and preamble.name == "team/preamble"
            assert sys.name == f"sys/{r.agent_id}" and task.name == f"{wid}/task"
            system[r.agent_id].add(sys)
        workers = [r for r in reqs if r.agent_id.startswith("worker-")]
        assert len({r.prompt[:-1] for r in workers}) == len(workers)
        assert len({r.prompt[2:-1] for r in workers}) == 1
        reducer = next(r for r in reqs if r.agent_id == "reducer")
        assert set(reducer.after) == {r.id for r in workers}
        assert reducer.prompt[-1].tokens == sum(r.output_tokens for r in workers)
        history = f"{wid}/history"
        assert grows(reqs[0], reducer, history) and grows(reducer, reqs[-1], history)
        assert all(r.prompt[-2] == reducer.prompt[-2] for r in workers)
    assert all(len(s) == 1 for s in system.values())
    lengths = {next(iter(s)).tokens for s in system.values()}
    assert len(lengths) > 1 and all(160 <= n <= 640 for n in lengths)


def test_template_flags_change_the_shape() -> None:
    chain = load(generate("template", shape="chain", chain_length=3, instances=4, rounds=2,
                          preamble_tokens=0, spacing_s=0))
    graph = chain.workflows["tpl-0"]
    assert graph.order == ("planner", "researcher", "drafter") and graph.repeat
    assert len(chain.requests) == 4 * 3 * 2
    assert all(r.prompt[0].name == f"sys/{r.agent_id}" for r in chain.requests)
    assert {r.arrival_s for r in chain.requests if r.is_root} == {0.0}
    for wid, reqs in by_workflow(chain).items():
        assert [r.step for r in reqs] == list(range(6))
        assert all(grows(a, b, f"{wid}/history") for a, b in pairwise(reqs))
        assert extends(reqs[0], reqs[3])
    wide = load(generate("template", workers=9, instances=3, rounds=2, spacing_s=50))
    assert len(wide.workflows) == 3 and len(wide.requests) == 3 * 12 * 2
    planners = [r for r in wide.requests if r.agent_id == "planner" and not r.is_root]
    assert len(planners) == 3 and all(r.after[0].split("/")[1] == "critic" for r in planners)
    roots = sorted(r.arrival_s for r in wide.requests if r.is_root)
    assert roots[0] == 0 and roots[-1] > 20


def test_rounds_are_declared_workflows_of_their_actors() -> None:
    trace = load(generate("rounds", **SMALL["rounds"]))
    groups = by_workflow(trace)
    assert list(trace.workflows) == [f"round-{r}" for r in range(8)] == list(groups)
    previous: set[str] = set()
    for wid, reqs in groups.items():
        assert set(trace.workflows[wid]) == {r.agent_id for r in reqs} and len(reqs) == 4
        for r in reqs:
            assert set(r.after) == previous and r.step == 0
            assert [s.name for s in r.prompt[:2]] == ["world", f"sys/{r.agent_id}"]
        previous = {r.id for r in reqs}
    acts: dict[str, list[TraceRequest]] = defaultdict(list)
    for r in trace.requests:
        acts[r.agent_id].append(r)
    repeated = [a for a, rs in acts.items() if len(rs) > 1]
    assert repeated and len(acts) < 30
    for agent in repeated:
        for a, b in pairwise(acts[agent]):
            assert b.prompt[2].name == f"{agent}/memory" and extends(a, b)


def test_rounds_reactors_and_persistence() -> None:
    trace = load(generate("rounds", agents=20, rounds=5, active=5, reactors=2, persistence=1.0))
    actors = [frozenset(r.agent_id for r in reqs) for reqs in by_workflow(trace).values()]
    assert len(set(actors)) == 1
    for wid, reqs in by_workflow(trace).items():
        graph = trace.workflows[wid]
        first = [r for r in reqs if not graph.depends_on(r.agent_id)]
        reacting = [r for r in reqs if graph.depends_on(r.agent_id)]
        assert len(first) == 3 and len(reacting) == 2
        for r in reacting:
            assert set(graph.depends_on(r.agent_id)) == {f.agent_id for f in first}
            assert set(r.after) == {f.id for f in first} and r.step == 1
            assert r.prompt[-1].tokens == sum(f.output_tokens for f in first)
    shifting = load(generate("rounds", agents=200, rounds=20, active=5, zipf=0.0, persistence=0.0))
    assert len({r.agent_id for r in shifting.requests}) > 40


def test_tickets_are_undeclared_routes_from_triage() -> None:
    records = generate("tickets", tickets=60, max_steps=6, determinism=1.0)
    assert not any(r["type"] == "workflow" for r in records)
    trace = load(records)
    groups = by_workflow(trace)
    assert list(groups) == [f"ticket-{i}" for i in range(60)]
    terminal = set(SPECIALISTS[-2:])
    successor: dict[tuple[str, str], set[str]] = defaultdict(set)
    for wid, reqs in groups.items():
        seq = [r.agent_id for r in reqs]
        assert seq[0] == "triage" and "triage" not in seq[1:]
        assert seq[-1] in terminal or len(seq) == 6
        assert not terminal & set(seq[:-1])
        for r in reqs:
            assert r.prompt[0].name == f"sys/{r.agent_id}"
        assert all(grows(a, b, f"{wid}/history") for a, b in pairwise(reqs))
        for prev, cur, nxt in zip(seq, seq[1:], seq[2:]):
            successor[(prev, cur)].add(nxt)
    assert all(len(s) == 1 for s in successor.values())
    shared = Counter(r.agent_id for r in trace.requests)
    assert len(shared) > 4 and shared["triage"] == 60
    noisy = load(generate("tickets", tickets=60, max_steps=6, determinism=0.3))
    assert [r.agent_id for r in noisy.requests] != [r.agent_id for r in trace.requests]


def test_tickets_flags_change_sizes() -> None:
    short = load(generate("tickets", tickets=10, specialists=3, terminals=0, max_steps=2))
    assert len(short.requests) == 20
    assert {r.agent_id for r in short.requests} <= {"triage", "billing", "refunds"}
    many = load(generate("tickets", tickets=30, specialists=14, terminals=1, max_steps=20,
                         spacing_s=0))
    routes = [[r.agent_id for r in reqs] for reqs in by_workflow(many).values()]
    assert all(seq[-1] == "specialist-13" or len(seq) == 20 for seq in routes)
    assert any(len(seq) > 8 for seq in routes)
    assert {a for seq in routes for a in seq} > {"triage", "specialist-10"}
    assert {r.arrival_s for r in many.requests if r.is_root} == {0.0}


@pytest.mark.parametrize(
    ("kind", "params", "word"),
    [
        ("template", {"workers": 0}, "'workers' must be >= 1"),
        ("template", {"instances": 0}, "'instances' must be >= 1"),
        ("template", {"shape": "star"}, "'shape' must be one of fanout, chain"),
        ("template", {"system_spread": 1.5}, "'system_spread' must be <= 1"),
        ("template", {"preamble_tokens": -1}, "'preamble_tokens' must be >= 0"),
        ("rounds", {"agents": 3, "active": 4}, "'active' .* exceeds agents"),
        ("rounds", {"active": 4, "reactors": 4}, "'reactors' .* must be below active"),
        ("rounds", {"persistence": 1.5}, "'persistence' must be <= 1"),
        ("tickets", {"specialists": 3, "terminals": 3}, "'terminals' .* must be below specialists"),
        ("tickets", {"determinism": 1.5}, "'determinism' must be <= 1"),
        ("tickets", {"closing": -0.1}, "'closing' must be >= 0"),
        ("tickets", {"max_steps": 0}, "'max_steps' must be >= 1"),
    ],
)
def test_bad_parameters_are_named(kind: str, params: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        generate(kind, **params)


def test_cli_writes_each_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.jsonl"
    argv = ["template", "--out", str(out), "--seed", "2", "--shape", "chain", "--instances", "5",
            "--rounds", "1"]
    assert main(argv) == 0
    assert out.read_text(encoding="utf-8").startswith("# generated by context-forge-gen template")
    trace = load_trace(out)
    assert len(trace.workflows) == 5 and len(trace.requests) == 25
    assert "25 requests, 5 workflows (5 declared)" in capsys.readouterr().err
    assert main(["rounds", "--out", str(out), "--rounds", "3", "--reactors", "1"]) == 0
    assert len(load_trace(out).workflows) == 3
    assert main(["tickets", "--out", str(out), "--tickets", "4"]) == 0
    assert "4 workflows (0 declared)" in capsys.readouterr().err
    assert main(["template", "--out", str(out), "--workers", "0"]) == 2
    assert "'workers' must be >= 1" in capsys.readouterr().err
