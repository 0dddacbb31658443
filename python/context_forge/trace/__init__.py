"""Workload traces: the format's records, reader, writer, token function and generators."""

from context_forge.trace.reader import load_trace, parse_trace
from context_forge.trace.records import Segment, Trace, TraceError, TraceMeta, TraceRequest
from context_forge.trace.tokens import prompt_tokens, segment_tokens
from context_forge.trace.writer import TraceWriter, dump_trace

__all__ = [
    "Segment",
    "Trace",
    "TraceError",
    "TraceMeta",
    "TraceRequest",
    "TraceWriter",
    "dump_trace",
    "load_trace",
    "parse_trace",
    "prompt_tokens",
    "segment_tokens",
]
