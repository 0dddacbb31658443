"""In-memory form of a workload trace (shared/workload-trace-format.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from context_forge.trace.tokens import prompt_tokens

if TYPE_CHECKING:
    from context_forge.workflow.graph import WorkflowGraph

__all__ = ["DEFAULT_VOCAB_SIZE", "TraceError", "Segment", "TraceMeta", "TraceRequest", "Trace"]

DEFAULT_VOCAB_SIZE = 32000


class TraceError(ValueError):
    """A malformed trace. The message names the line, the record and the field.

    Example: ``line 7: request 'wf-3/coder/0': field 'after': unknown request id 'x'``.
    """

    def __init__(
        self, line: int, message: str, *, field: str | None = None, record: str | None = None
    ) -> None:
        self.line = line
        self.field = field
        self.record = record
        self.reason = message
        parts = [f"line {line}"]
        if record is not None:
            parts.append(record)
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(message)
        super().__init__(": ".join(parts))


@dataclass(frozen=True)
class Segment:
    """One named run of synthetic tokens inside a prompt."""

    name: str
    tokens: int


@dataclass(frozen=True)
class TraceMeta:
    """The optional ``meta`` record; defaults apply when a trace has none."""

    name: str = ""
    version: int = 1
    vocab_size: int = DEFAULT_VOCAB_SIZE


@dataclass(frozen=True, kw_only=True)
class TraceRequest:
    """One ``request`` record.

    ``step`` is derived, not stored in the file: the request's depth in the ``after`` graph
    restricted to its own workflow (roots are step 0). ``line`` is where it was read from
    (0 when built in memory).
    """

    id: str
    workflow_id: str
    agent_id: str
    after: tuple[str, ...] = ()
    delay_s: float = 0.0
    arrival_s: float = 0.0
    prompt: tuple[Segment, ...]
    output_tokens: int
    step: int = 0
    line: int = 0

    @property
    def prompt_len(self) -> int:
        """Number of prompt tokens (sum of segment lengths)."""
        return sum(seg.tokens for seg in self.prompt)

    @property
    def is_root(self) -> bool:
        """True when the request waits on nothing and is sent at ``arrival_s``."""
        return not self.after

    def tokens(self, vocab_size: int) -> list[int]:
        """The prompt's token ids: the concatenation of its segments' ids."""
        return prompt_tokens(((seg.name, seg.tokens) for seg in self.prompt), vocab_size)

    def to_record(self) -> dict[str, Any]:
        """The JSON object of this request as the trace format writes it."""
        return {
            "type": "request",
            "id": self.id,
            "workflow_id": self.workflow_id,
            "agent_id": self.agent_id,
            "after": list(self.after),
            "delay_s": self.delay_s,
            "arrival_s": self.arrival_s,
            "prompt": [{"segment": s.name, "tokens": s.tokens} for s in self.prompt],
            "output_tokens": self.output_tokens,
        }


@dataclass
class Trace:
    """A loaded trace: metadata, declared workflow graphs and requests in file order."""

    meta: TraceMeta = field(default_factory=TraceMeta)
    workflows: dict[str, WorkflowGraph] = field(default_factory=dict)
    requests: list[TraceRequest] = field(default_factory=list)
    _positions: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    def workflow_ids(self) -> list[str]:
        """Every workflow id, declared ones first (record order), then request-only ones."""
        seen = dict.fromkeys(self.workflows)
        for req in self.requests:
            seen.setdefault(req.workflow_id)
        return list(seen)

    def request(self, request_id: str) -> TraceRequest:
        """The request with id ``request_id`` (``KeyError`` naming it when absent)."""
        pos = self._positions.get(request_id)
        if pos is None or pos >= len(self.requests) or self.requests[pos].id != request_id:
            self._positions = {req.id: i for i, req in enumerate(self.requests)}
            pos = self._positions.get(request_id)
        if pos is not None:
            return self.requests[pos]
        raise KeyError(f"unknown request id {request_id!r}")

    def is_dynamic(self, workflow_id: str) -> bool:
        """True when ``workflow_id`` has requests but no ``workflow`` record."""
        if workflow_id in self.workflows:
            return False
        if any(req.workflow_id == workflow_id for req in self.requests):
            return True
        raise KeyError(f"unknown workflow id {workflow_id!r}")

    def working_set_tokens(self) -> int:
        """Distinct prompt tokens: the longest use of each segment name, summed.

        Sharing between differently named segments (there is none by construction of the
        token function, up to rare collisions) is not counted.
        """
        longest: dict[str, int] = {}
        for req in self.requests:
            for seg in req.prompt:
                if seg.tokens > longest.get(seg.name, 0):
                    longest[seg.name] = seg.tokens
        return sum(longest.values())

    def repeating_workflows(self) -> set[str]:
        """Declared workflows in which some agent has more than one request (cyclic runs)."""
        seen: set[tuple[str, str]] = set()
        repeating: set[str] = set()
        for req in self.requests:
            if req.workflow_id not in self.workflows:
                continue
            key = (req.workflow_id, req.agent_id)
            if key in seen:
                repeating.add(req.workflow_id)
            seen.add(key)
        return repeating
