"""Reader of workload traces (shared/workload-trace-format.md, version 1).

Accepted input, exactly as the spec states it: JSON Lines in UTF-8 (a leading byte-order
mark is tolerated); blank lines and lines whose first non-space character is ``#`` are
ignored; every record has a known ``type``; unknown extra fields are ignored. Choices the
spec leaves open, made here:

- ``meta`` may also come after comment lines; ``version`` must be 1; ``vocab_size`` must be
  an integer in [1, 2^32]; ``name`` defaults to the file's stem.
- Numbers: ``delay_s`` / ``arrival_s`` are finite and >= 0 (``null`` means the default);
  token counts must be JSON integers (``160.0`` is rejected).
- ``request`` needs ``id``, ``workflow_id``, ``agent_id`` (non-empty strings), ``prompt`` and
  ``output_tokens``. ``output_tokens`` may be 0 (a prefill-only request).
- ``after`` may not list an id twice or the request itself; every id must name a request
  earlier in the file (this also rules out dependency cycles between requests).
- A request whose workflow has a ``workflow`` record must use one of that graph's agents;
  the record may come before or after the workflow's requests.

The first malformed line stops reading with a :class:`TraceError` naming line and field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from context_forge.trace.records import (
    DEFAULT_VOCAB_SIZE,
    Segment,
    Trace,
    TraceError,
    TraceMeta,
    TraceRequest,
)
from context_forge.trace.tokens import MAX_VOCAB_SIZE
from context_forge.workflow.graph import WorkflowGraph

__all__ = ["TraceError", "load_trace", "parse_trace", "RECORD_TYPES"]

SUPPORTED_VERSION = 1
_MISSING = object()


class _Fields:
    """Typed access to one record's fields; every failure is a TraceError for that field."""

    def __init__(self, obj: dict[str, Any], line: int, label: str) -> None:
        self.obj = obj
        self.line = line
        self.label = label

    def error(self, field: str | None, message: str) -> TraceError:
        return TraceError(self.line, message, field=field, record=self.label)

    def get(self, name: str, default: Any = _MISSING) -> Any:
        value = self.obj.get(name, _MISSING)
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise self.error(name, "missing")
            return default
        return value

    def string(self, name: str, default: Any = _MISSING) -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        return value

    def integer(self, name: str, minimum: int, default: Any = _MISSING) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {value}")
        return value

    def seconds(self, name: str) -> float:
        value = self.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise self.error(name, f"must be a finite number >= 0, got {value!r}")
        return float(value)


class _Parser:
    """Accumulates records line by line; :meth:`finish` runs the whole-file checks."""

    def __init__(self, default_name: str) -> None:
        self.default_name = default_name
        self.meta: TraceMeta | None = None
        self.meta_line = 0
        self.records = 0
        self.workflows: dict[str, WorkflowGraph] = {}
        self.workflow_lines: dict[str, int] = {}
        self.requests: list[TraceRequest] = []
        self.by_id: dict[str, TraceRequest] = {}

    def feed(self, line: int, text: str) -> None:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(line, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise TraceError(line, f"a record must be a JSON object, got {type(obj).__name__}")
        kind = obj.get("type", _MISSING)
        if kind is _MISSING:
            raise TraceError(line, "missing", field="type")
        handler = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
        if handler is None:
            known = ", ".join(RECORD_TYPES)
            raise TraceError(line, f"unknown record type {kind!r} (known: {known})", field="type")
        handler(self, obj, line)
        self.records += 1

    def meta_record(self, obj: dict[str, Any], line: int) -> None:
        f = _Fields(obj, line, "meta")
        if self.meta is not None:
            raise f.error("type", f"duplicate meta record (first on line {self.meta_line})")
        if self.records:
            raise f.error("type", "meta must be the first record of the file")
        version = f.integer("version", 1, default=SUPPORTED_VERSION)
        if version != SUPPORTED_VERSION:
            raise f.error("version", f"unsupported version {version} (supported: 1)")
        name = obj.get("name")
        if name is not None and not isinstance(name, str):
            raise f.error("name", f"must be a string, got {name!r}")
        vocab = f.integer("vocab_size", 1, default=DEFAULT_VOCAB_SIZE)
        if vocab > MAX_VOCAB_SIZE:
            raise f.error("vocab_size", f"must be <= 2^32, got {vocab}")
        self.meta = TraceMeta(name=name or self.default_name, version=version, vocab_size=vocab)
        self.meta_line = line

    def workflow_record(self, obj: dict[str, Any], line: int) -> None:
        f = _Fields(obj, line, "workflow")
        wid = f.string("workflow_id")
        f.label = f"workflow {wid!r}"
        if wid in self.workflows:
            first = self.workflow_lines[wid]
            raise f.error("workflow_id", f"workflow declared twice (first on line {first})")
        if not isinstance(f.get("agents"), list):
            raise f.error("agents", f"must be a list of agents, got {obj['agents']!r}")
        if "repeat" in obj and not isinstance(obj["repeat"], bool):
            raise f.error("repeat", f"must be true or false, got {obj['repeat']!r}")
        try:
            graph = WorkflowGraph.from_dict(obj)
        except (ValueError, TypeError, KeyError) as exc:
            raise f.error("agents", str(exc)) from exc
        self.workflows[wid] = graph
        self.workflow_lines[wid] = line

    def request_record(self, obj: dict[str, Any], line: int) -> None:
        f = _Fields(obj, line, "request")
        rid = f.string("id")
        f.label = f"request {rid!r}"
        if rid in self.by_id:
            raise f.error("id", f"duplicate request id (first on line {self.by_id[rid].line})")
        wid = f.string("workflow_id")
        agent = f.string("agent_id")
        after = self._after(f, rid)
        step = 0
        for dep in after:
            parent = self.by_id[dep]
            if parent.workflow_id == wid:
                step = max(step, parent.step + 1)
        req = TraceRequest(
            id=rid,
            workflow_id=wid,
            agent_id=agent,
            after=after,
            delay_s=f.seconds("delay_s"),
            arrival_s=f.seconds("arrival_s"),
            prompt=_prompt(f),
            output_tokens=f.integer("output_tokens", 0),
            step=step,
            line=line,
        )
        self.requests.append(req)
        self.by_id[rid] = req

    def _after(self, f: _Fields, rid: str) -> tuple[str, ...]:
        deps = f.get("after", [])
        if not isinstance(deps, list):
            raise f.error("after", f"must be a list of request ids, got {deps!r}")
        seen: set[str] = set()
        for dep in deps:
            if not isinstance(dep, str):
                raise f.error("after", f"request ids must be strings, got {dep!r}")
            if dep == rid:
                raise f.error("after", "a request cannot wait on itself")
            if dep in seen:
                raise f.error("after", f"request id {dep!r} listed twice")
            if dep not in self.by_id:
                raise f.error(
                    "after", f"unknown request id {dep!r} (it must be a request earlier in the file)"
                )
            seen.add(dep)
        return tuple(deps)

    def finish(self) -> Trace:
        for req in self.requests:
            graph = self.workflows.get(req.workflow_id)
            if graph is not None and req.agent_id not in graph:
                raise TraceError(
                    req.line,
                    f"agent {req.agent_id!r} is not in declared workflow {req.workflow_id!r} "
                    f"(agents: {', '.join(graph.agent_ids)})",
                    field="agent_id",
                    record=f"request {req.id!r}",
                )
        meta = self.meta or TraceMeta(name=self.default_name)
        return Trace(meta=meta, workflows=self.workflows, requests=self.requests)


def _prompt(f: _Fields) -> tuple[Segment, ...]:
    items = f.get("prompt")
    if not isinstance(items, list) or not items:
        raise f.error("prompt", f"must be a non-empty list of segments, got {items!r}")
    segments = []
    for i, item in enumerate(items):
        where = f"prompt[{i}]"
        if not isinstance(item, dict):
            raise f.error(where, f"a segment must be an object, got {item!r}")
        name = item.get("segment")
        if not isinstance(name, str) or not name:
            raise f.error(f"{where}.segment", f"must be a non-empty string, got {name!r}")
        tokens = item.get("tokens")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise f.error(f"{where}.tokens", f"must be an integer > 0, got {tokens!r}")
        segments.append(Segment(name, tokens))
    return tuple(segments)


RECORD_TYPES: dict[str, Callable[[_Parser, dict[str, Any], int], None]] = {
    "meta": _Parser.meta_record,
    "workflow": _Parser.workflow_record,
    "request": _Parser.request_record,
}
"""Record handlers by ``type``; a ``type`` absent here is an error."""


def parse_trace(lines: Iterable[str | bytes], name: str = "") -> Trace:
    """Parse trace lines (``str`` or UTF-8 ``bytes``, with or without line ends)."""
    parser = _Parser(name)
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceError(number, f"not valid UTF-8 ({exc.reason})") from None
        text = raw.strip()
        if number == 1:
            text = text.lstrip("\ufeff")
        if text and not text.startswith("#"):
            parser.feed(number, text)
    return parser.finish()


def load_trace(path_or_lines: str | os.PathLike[str] | Iterable[str | bytes]) -> Trace:
    """Load a trace from a file path, or parse an iterable of lines.

    With a path, a trace without a ``meta`` name is named after the file's stem.
    """
    if isinstance(path_or_lines, (str, os.PathLike)):
        path = Path(path_or_lines)
        with path.open("rb") as fh:
            return parse_trace(fh, name=path.stem)
    return parse_trace(path_or_lines)
