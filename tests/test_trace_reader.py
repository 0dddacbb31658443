"""Trace reader: accepted input, derived fields, and every malformed case the spec rules out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.trace import Segment, TraceError, load_trace, parse_trace
from context_forge.trace.tokens import segment_tokens
from context_forge.workflow.graph import WorkflowGraph

META = {"type": "meta", "version": 1, "name": "t", "vocab_size": 1000}
WF = {
    "type": "workflow",
    "workflow_id": "wf-3",
    "agents": [
        {"agent_id": "planner", "depends_on": []},
        {"agent_id": "coder", "depends_on": ["planner"]},
        {"agent_id": "tester", "depends_on": ["coder"]},
        {"agent_id": "reviewer", "depends_on": ["coder", "tester"], "optional": True},
    ],
}


def req(rid: str, agent: str = "planner", wf: str = "wf-3", after: list[str] | None = None,
        **extra: object) -> dict:
    record = {"type": "request", "id": rid, "workflow_id": wf, "agent_id": agent,
              "prompt": [{"segment": f"sys/{agent}", "tokens": 5}], "output_tokens": 4}
    if after is not None:
        record["after"] = after
    record.update(extra)
    return record


def lines(*records: object) -> list[str]:
    return [r if isinstance(r, str) else json.dumps(r) for r in records]


def test_spec_example_and_defaults() -> None:
    example = {"type": "request", "id": "wf-3/coder/0", "workflow_id": "wf-3", "agent_id": "coder",
               "after": ["wf-3/planner/0"], "delay_s": 0.5, "arrival_s": 0.0,
               "prompt": [{"segment": "sys/coder", "tokens": 2400},
                          {"segment": "wf-3/history", "tokens": 600},
                          {"segment": "wf-3/coder/0/input", "tokens": 90}],
               "output_tokens": 160}
    trace = parse_trace(lines(META, WF, req("wf-3/planner/0", arrival_s=1.5), example))
    assert trace.meta.name == "t" and trace.meta.vocab_size == 1000 and trace.meta.version == 1
    assert isinstance(trace.workflows["wf-3"], WorkflowGraph)
    root, coder = trace.requests
    assert (root.after, root.delay_s, root.arrival_s, root.step, root.line) == ((), 0.0, 1.5, 0, 3)
    assert coder.after == ("wf-3/planner/0",) and coder.delay_s == 0.5 and coder.step == 1
    assert coder.prompt == (Segment("sys/coder", 2400), Segment("wf-3/history", 600),
                            Segment("wf-3/coder/0/input", 90))
    assert coder.prompt_len == 3090 and coder.output_tokens == 160 and coder.line == 4
    ids = coder.tokens(1000)
    assert ids[:2400] == segment_tokens("sys/coder", 2400, 1000)
    assert ids[2400:3000] == segment_tokens("wf-3/history", 600, 1000)
    assert len(ids) == 3090
    assert trace.request("wf-3/coder/0") is coder


def test_no_meta_gives_defaults_and_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-trace.jsonl"
    path.write_text("\n".join(lines(req("a", wf="x"))) + "\n", encoding="utf-8")
    trace = load_trace(path)
    assert trace.meta.vocab_size == 32000 and trace.meta.name == "my-trace"
    assert load_trace(str(path)).requests == trace.requests


def test_blank_comment_lines_and_unknown_fields_ignored() -> None:
    trace = parse_trace([
        "# a comment",
        "",
        "   ",
        "  # indented comment",
        json.dumps(META | {"future": 1}),
        json.dumps(WF | {"owner": "me"}),
        json.dumps(req("a", note="x", prompt=[{"segment": "s", "tokens": 3, "cache": "hot"}])),
        "\t",
    ])
    assert len(trace.requests) == 1 and trace.requests[0].line == 7
    assert trace.requests[0].prompt == (Segment("s", 3),)


def test_output_tokens_zero_allowed_and_null_optionals() -> None:
    trace = parse_trace(lines(req("a", output_tokens=0, after=None, delay_s=None)))
    assert trace.requests[0].output_tokens == 0 and trace.requests[0].after == ()


def test_steps_follow_the_after_graph_within_a_workflow() -> None:
    trace = parse_trace(lines(
        WF,
        req("p", "planner"),
        req("c", "coder", after=["p"]),
        req("t", "tester", after=["c"]),
        req("r", "reviewer", after=["c", "t"]),
        req("other-root", "x", wf="dyn"),
        req("other-next", "y", wf="dyn", after=["other-root", "r"]),
        req("p2", "planner", after=["r"]),
    ))
    steps = {r.id: r.step for r in trace.requests}
    assert steps == {"p": 0, "c": 1, "t": 2, "r": 3, "other-root": 0, "other-next": 1, "p2": 4}
    assert trace.is_dynamic("dyn") and not trace.is_dynamic("wf-3")
    assert trace.repeating_workflows() == {"wf-3"}
    assert trace.workflow_ids() == ["wf-3", "dyn"]
    with pytest.raises(KeyError, match="nope"):
        trace.is_dynamic("nope")


def test_cross_workflow_edge_to_later_step() -> None:
    trace = parse_trace(lines(req("a", wf="u"), req("b", wf="u", after=["a"]),
                              req("c", wf="v", after=["b"])))
    assert [r.step for r in trace.requests] == [0, 1, 0]
    assert trace.repeating_workflows() == set()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sets(st.integers(0, 30), max_size=3)),
                min_size=1, max_size=25))
def test_step_is_longest_same_workflow_path(spec: list[tuple[int, set[int]]]) -> None:
    records, wf_of = [], []
    for i, (wf, deps) in enumerate(spec):
        after = [f"r{d}" for d in sorted(deps) if d < i]
        records.append(req(f"r{i}", wf=f"w{wf}", after=after))
        wf_of.append(wf)
    trace = parse_trace(lines(*records))
    expected: list[int] = []
    for i, rec in enumerate(records):
        same = [expected[int(a[1:])] + 1 for a in rec["after"] if wf_of[int(a[1:])] == wf_of[i]]
        expected.append(max(same, default=0))
    assert [r.step for r in trace.requests] == expected


BAD = [
    ("bad json", ['{"type": "request", '], 1, None),
    ("not an object", ["[1, 2]"], 1, None),
    ("missing type", [{"id": "a"}], 1, "type"),
    ("unknown type", [{"type": "tool_call"}], 1, "type"),
    ("type not a string", [{"type": 7}], 1, "type"),
    ("meta not first", [req("a"), META], 2, "type"),
    ("meta after workflow", ["# c", WF, META], 3, "type"),
    ("duplicate meta", [META, META], 2, "type"),
    ("meta version", [META | {"version": 2}], 1, "version"),
    ("meta vocab", [META | {"vocab_size": 0}], 1, "vocab_size"),
    ("meta vocab type", [META | {"vocab_size": "big"}], 1, "vocab_size"),
    ("meta name", [META | {"name": 3}], 1, "name"),
    ("missing id", [{"type": "request", "workflow_id": "w", "agent_id": "a"}], 1, "id"),
    ("empty id", [req("")], 1, "id"),
    ("duplicate id", [req("a"), "", req("a")], 3, "id"),
    ("missing workflow_id", [{k: v for k, v in req("a").items() if k != "workflow_id"}], 1,
     "workflow_id"),
    ("missing agent_id", [{k: v for k, v in req("a").items() if k != "agent_id"}], 1, "agent_id"),
    ("unknown after", [req("a"), req("b", after=["x"])], 2, "after"),
    ("after appears later", [req("a", after=["b"]), req("b")], 1, "after"),
    ("after self", [req("a", after=["a"])], 1, "after"),
    ("after twice", [req("a"), req("b", after=["a", "a"])], 2, "after"),
    ("after not a list", [req("a"), req("b", after="a")], 2, "after"),
    ("after not strings", [req("a", after=[1])], 1, "after"),
    ("negative delay", [req("a"), req("b", after=["a"], delay_s=-0.1)], 2, "delay_s"),
    ("negative arrival", [req("a", arrival_s=-1)], 1, "arrival_s"),
    ("nan delay", [req("a"), req("b", after=["a"], delay_s=float("nan"))], 2, "delay_s"),
    ("infinite arrival", [req("a", arrival_s=float("inf"))], 1, "arrival_s"),
    ("delay string", [req("a", delay_s="1s")], 1, "delay_s"),
    ("delay bool", [req("a", delay_s=True)], 1, "delay_s"),
    ("missing prompt", [{k: v for k, v in req("a").items() if k != "prompt"}], 1, "prompt"),
    ("empty prompt", [req("a", prompt=[])], 1, "prompt"),
    ("prompt not list", [req("a", prompt="hello")], 1, "prompt"),
    ("segment not object", [req("a", prompt=["sys"])], 1, "prompt[0]"),
    ("segment name missing", [req("a", prompt=[{"tokens": 3}])], 1, "prompt[0].segment"),
    ("segment tokens zero", [req("a", prompt=[{"segment": "s", "tokens": 0}])], 1,
     "prompt[0].tokens"),
    ("segment tokens float", [req("a", prompt=[{"segment": "s", "tokens": 1},
                                               {"segment": "t", "tokens": 2.5}])], 1,
     "prompt[1].tokens"),
    ("missing output_tokens", [{k: v for k, v in req("a").items() if k != "output_tokens"}], 1,
     "output_tokens"),
    ("negative output_tokens", [req("a", output_tokens=-1)], 1, "output_tokens"),
    ("cyclic workflow", [{"type": "workflow", "workflow_id": "w", "agents": [
        {"agent_id": "a", "depends_on": ["b"]}, {"agent_id": "b", "depends_on": ["a"]}]}], 1,
     "agents"),
    ("unknown dependency", [{"type": "workflow", "workflow_id": "w", "agents": [
        {"agent_id": "a", "depends_on": ["ghost"]}]}], 1, "agents"),
    ("duplicate agent", [{"type": "workflow", "workflow_id": "w", "agents": [
        {"agent_id": "a"}, {"agent_id": "a"}]}], 1, "agents"),
    ("agents missing", [{"type": "workflow", "workflow_id": "w"}], 1, "agents"),
    ("agents not list", [{"type": "workflow", "workflow_id": "w", "agents": {}}], 1, "agents"),
    ("repeat not bool", [WF | {"repeat": "yes"}], 1, "repeat"),
    ("workflow_id missing", [{"type": "workflow", "agents": []}], 1, "workflow_id"),
    ("workflow twice", [WF, WF], 2, "workflow_id"),
    ("agent not in graph", [WF, req("a", "planner"), req("b", "hacker", after=["a"])], 3,
     "agent_id"),
    ("agent not in graph declared later", [req("a", "hacker"), WF], 1, "agent_id"),
]


@pytest.mark.parametrize(("records", "line", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_input_names_line_and_field(records: list, line: int, field: str | None) -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(lines(*records))
    err = info.value
    assert err.line == line and str(err).startswith(f"line {line}: ")
    assert err.field == field
    if field is not None:
        assert f"field {field!r}" in str(err)


def test_error_message_format() -> None:
    with pytest.raises(TraceError) as info:
        parse_trace(lines({"type": "meta"}, "", "", "", "", "",
                          req("wf-3/coder/0", after=["x"])))
    assert str(info.value).startswith(
        "line 7: request 'wf-3/coder/0': field 'after': unknown request id 'x'"
    )
    with pytest.raises(TraceError, match=r"line 2: request 'b': field 'agent_id': agent 'hacker' "
                                         r"is not in declared workflow 'wf-3'"):
        parse_trace(lines(WF, req("b", "hacker")))
    with pytest.raises(TraceError, match=r"line 1: workflow 'w': field 'agents': dependency cycle: "):
        parse_trace(lines({"type": "workflow", "workflow_id": "w",
                           "agents": [{"agent_id": "a", "depends_on": ["a"]}]}))


def test_trace_error_is_value_error_and_invalid_utf8() -> None:
    with pytest.raises(ValueError, match="line 2: not valid UTF-8"):
        parse_trace([b"# ok\n", b"\xff\xfe{}\n"])


def test_bytes_lines_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    text = "\ufeff" + "\n".join(lines(META, req("é", wf="w"))) + "\n"
    path.write_bytes(text.encode("utf-8"))
    assert load_trace(path).requests[0].id == "é"
