"""Trace writer: what it writes reads back identically; it refuses records it can see are wrong."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from context_forge.trace import Segment, Trace, TraceMeta, TraceRequest, TraceWriter, dump_trace, load_trace
from context_forge.trace.writer import trace_to_records, workflow_record
from context_forge.workflow.graph import AgentSpec, WorkflowGraph


def sample_trace() -> Trace:
    graph = WorkflowGraph(
        [AgentSpec("plan"), AgentSpec("do", ("plan",)), AgentSpec("check", ("do",), optional=True)],
        repeat=True,
    )
    reqs = [
        TraceRequest(id="w/plan/0", workflow_id="w", agent_id="plan", arrival_s=0.25,
                     prompt=(Segment("sys/plan", 100), Segment("w/plan/0/input", 7)),
                     output_tokens=9),
        TraceRequest(id="w/do/0", workflow_id="w", agent_id="do", after=("w/plan/0",), delay_s=1.5,
                     prompt=(Segment("sys/do", 50), Segment("w/history", 16)), output_tokens=0,
                     step=1),
        TraceRequest(id="d/x/0", workflow_id="d", agent_id="x", after=("w/do/0",),
                     prompt=(Segment("sys/x", 3),), output_tokens=1),
    ]
    return Trace(meta=TraceMeta(name="sample", vocab_size=5000), workflows={"w": graph},
                 requests=reqs)


def strip_lines(trace: Trace) -> list[TraceRequest]:
    return [TraceRequest(**{**r.__dict__, "line": 0}) for r in trace.requests]


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    original = sample_trace()
    path = tmp_path / "t.jsonl"
    assert dump_trace(original, path, header="made by a test\nsecond line") == 5
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# made by a test\n# second line\n")
    loaded = load_trace(path)
    assert loaded.meta == original.meta
    assert loaded.workflows == original.workflows
    assert strip_lines(loaded) == original.requests
    assert [r.line for r in loaded.requests] == [5, 6, 7]


def test_records_round_trip_to_a_stream() -> None:
    records = trace_to_records(sample_trace())
    buf = io.StringIO()
    with TraceWriter(buf) as writer:
        writer.write_all(records)
    assert not buf.closed
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == records


def test_workflow_record_omits_defaults() -> None:
    graph = WorkflowGraph([AgentSpec("a"), AgentSpec("b", ("a",))])
    assert workflow_record("w", graph) == {
        "type": "workflow", "workflow_id": "w",
        "agents": [{"agent_id": "a", "depends_on": []}, {"agent_id": "b", "depends_on": ["a"]}],
    }


def test_writer_rejects_what_the_reader_would() -> None:
    with TraceWriter(io.StringIO()) as writer:
        with pytest.raises(ValueError, match="field 'type'"):
            writer.write({"id": "a"})
        with pytest.raises(ValueError, match="field 'type'"):
            writer.write({"type": "tool"})
        writer.write({"type": "request", "id": "a"})
        with pytest.raises(ValueError, match="meta must be the first record"):
            writer.write({"type": "meta"})
        with pytest.raises(ValueError):
            writer.write({"type": "request", "delay_s": float("nan")})
        assert writer.count == 1
