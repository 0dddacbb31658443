"""Writer of workload traces: JSON Lines that :func:`context_forge.trace.reader.load_trace` accepts.

The writer checks what it can see line by line (a known ``type``, ``meta`` only as the first
record, JSON-safe values); whole-trace checks are the reader's job, so a round trip through
``load_trace`` is the way to validate a generated trace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from context_forge.trace.records import Trace

if TYPE_CHECKING:
    from context_forge.workflow.graph import WorkflowGraph

__all__ = ["TraceWriter", "dump_trace", "trace_to_records", "workflow_record"]

_TYPES = ("meta", "workflow", "request")


def workflow_record(workflow_id: str, graph: WorkflowGraph) -> dict[str, Any]:
    """The ``workflow`` record declaring ``graph`` under ``workflow_id``.

    ``repeat`` is written only when true; readers that do not know it ignore it.
    """
    record: dict[str, Any] = {
        "type": "workflow",
        "workflow_id": workflow_id,
        "agents": [
            {"agent_id": spec.agent_id, "depends_on": list(spec.depends_on)}
            | ({"optional": True} if spec.optional else {})
            for spec in graph.agents
        ],
    }
    if graph.repeat:
        record["repeat"] = True
    return record


def trace_to_records(trace: Trace) -> list[dict[str, Any]]:
    """Records that reproduce ``trace``: meta, then workflow records, then requests."""
    meta = trace.meta
    records: list[dict[str, Any]] = [
        {"type": "meta", "version": meta.version, "name": meta.name, "vocab_size": meta.vocab_size}
    ]
    records += [workflow_record(wid, graph) for wid, graph in trace.workflows.items()]
    records += [req.to_record() for req in trace.requests]
    return records


class TraceWriter:
    """Writes records one per line to a path or an open text stream.

    Use as a context manager; a stream passed in is flushed but not closed.
    """

    def __init__(self, dest: str | os.PathLike[str] | IO[str]) -> None:
        if isinstance(dest, (str, os.PathLike)):
            self._fh: IO[str] = Path(dest).open("w", encoding="utf-8", newline="\n")
            self._owns = True
        else:
            self._fh = dest
            self._owns = False
        self.count = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record (a mapping with a known ``type``)."""
        kind = record.get("type")
        if kind not in _TYPES:
            raise ValueError(f"record {self.count + 1}: field 'type': expected one of {_TYPES}, got {kind!r}")
        if kind == "meta" and self.count:
            raise ValueError(f"record {self.count + 1}: meta must be the first record")
        line = json.dumps(dict(record), ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
        self._fh.write(line + "\n")
        self.count += 1

    def write_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def comment(self, text: str) -> None:
        """Write ``# text`` lines (one per line of ``text``); readers skip them."""
        for part in text.splitlines() or [""]:
            self._fh.write(f"# {part}\n".replace("# \n", "#\n"))

    def close(self) -> None:
        if self._owns:
            self._fh.close()
        else:
            self._fh.flush()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dump_trace(
    trace_or_records: Trace | Iterable[Mapping[str, Any]],
    dest: str | os.PathLike[str] | IO[str],
    header: str | None = None,
) -> int:
    """Write a :class:`Trace` or an iterable of records; returns the number of records.

    ``header`` (optional) is written first as ``#`` comment lines.
    """
    if isinstance(trace_or_records, Trace):
        records: Iterable[Mapping[str, Any]] = trace_to_records(trace_or_records)
    else:
        records = trace_or_records
    with TraceWriter(dest) as writer:
        if header:
            writer.comment(header)
        writer.write_all(records)
        return writer.count
