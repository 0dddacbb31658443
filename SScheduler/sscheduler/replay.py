"""Replays a workload trace (shared/workload-trace-format.md) against a server, in real time.

Timing, as the trace format defines it: a root request is due `arrival_s` after the start; any
other request is due `delay_s` after the last of its `after` requests finished (closed loop).
With `concurrency` set, a due request also waits for one of that many in-flight slots (latency is
measured from the moment it is actually sent; `RequestRecord.due_s` keeps the trace's time).

Each request is sent to `/v1/completions` with the trace's exact token ids as the prompt,
`max_tokens = output_tokens` (1 for a prefill-only request with 0) and `ignore_eos`, greedy,
streamed with usage. Workflow life, through the target (`sscheduler.targets`): a workflow starts
(declared if the trace has its graph; `repeat` when the graph says so or one of its agents has
several requests, `Trace.repeating_workflows()`) just before its first request is sent, and is
finished after its last request (each request's completion reaches the target too; the
`context_forge` target leaves that to the server, which sees it). The last request of a workflow
to be sent is marked `final` (the `sglang` target's `custom_params.final`). If the run fails, workflows
still live are finished on the server before the error is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from context_forge.trace.reader import load_trace
from context_forge.trace.records import Trace, TraceRequest
from context_forge.workflow.graph import WorkflowGraph
from sscheduler.calls import CallResult, describe_error, normalize_base_url, resolve_model, stream_completion
from sscheduler.control import WorkflowControl
from sscheduler.errors import ReplayError, SSchedulerError
from sscheduler.progress import Progress, wait_all
from sscheduler.stats import ReplaySummary, summarize
from sscheduler.targets import Target, make_target

log = logging.getLogger("sscheduler")

__all__ = ["ReplayResult", "Replayer", "RequestRecord", "declared_graph", "replay_trace"]


@dataclass(frozen=True)
class RequestRecord:
    """One replayed request; times are seconds from the start of the replay."""

    request_id: str
    workflow_id: str
    agent_id: str
    due_s: float
    sent_s: float
    first_token_s: float | None
    finished_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @property
    def latency_s(self) -> float:
        return self.finished_s - self.sent_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.sent_s


@dataclass(frozen=True)
class ReplayResult:
    records: list[RequestRecord]
    """In trace order."""
    makespan_s: float

    def summary(self) -> ReplaySummary:
        return summarize(self.records, self.makespan_s)

    def record(self, request_id: str) -> RequestRecord:
        for r in self.records:
            if r.request_id == request_id:
                return r
        raise KeyError(f"no record of request {request_id!r}")


def declared_graph(trace: Trace, workflow_id: str) -> WorkflowGraph | None:
    """The graph to declare for a workflow of the trace: None for a dynamic one; forced to
    `repeat=True` when some agent of it has more than one request."""
    graph = trace.workflows.get(workflow_id)
    if graph is None or graph.repeat or workflow_id not in trace.repeating_workflows():
        return graph
    return WorkflowGraph(graph.agents, repeat=True)


class Replayer:
    """One replay of `trace` through `client` (an `openai.AsyncOpenAI`) and `target`."""

    def __init__(
        self, trace: Trace, client: openai.AsyncOpenAI, target: Target, model: str,
        concurrency: int | None = None, progress: bool | None = None,
    ) -> None:
        if not trace.requests:
            raise ReplayError(f"trace {trace.meta.name!r} has no requests")
        bad = isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        if concurrency is not None and bad:
            raise ValueError(f"concurrency must be an integer >= 1 or None, got {concurrency!r}")
        self.trace = trace
        self.client = client
        self.target = target
        self.model = model
        self.progress = progress
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._t0 = 0.0
        self._done = {r.id: asyncio.Event() for r in trace.requests}
        self._finished_at: dict[str, float] = {}
        self._left = Counter(r.workflow_id for r in trace.requests)
        self._unsent = Counter(r.workflow_id for r in trace.requests)
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._live: set[str] = set()
        self._bar: Progress | None = None

    async def run(self) -> ReplayResult:
        self._t0 = time.perf_counter()
        with Progress(len(self.trace.requests), self.trace.meta.name or "replay", self.progress, unit="req") as bar:
            self._bar = bar
            tasks = [asyncio.ensure_future(self._request(r)) for r in self.trace.requests]
            try:
                records = await wait_all(tasks)
            finally:
                await self._finish_live()
        makespan = max(r.finished_s for r in records)
        return ReplayResult(records=records, makespan_s=makespan)

    async def _request(self, req: TraceRequest) -> RequestRecord:
        if req.after:
            for dep in req.after:
                await self._done[dep].wait()
            due = max(self._finished_at[dep] for dep in req.after) + req.delay_s
        else:
            due = req.arrival_s
        await asyncio.sleep(max(0.0, self._t0 + due - time.perf_counter()))
        await self._start_workflow(req.workflow_id)
        tokens = req.tokens(self.trace.vocab_size)
        async with self._slots if self._slots is not None else contextlib.nullcontext():
            result = await self._send(req, tokens)
        record = RequestRecord(
            request_id=req.id, workflow_id=req.workflow_id, agent_id=req.agent_id, due_s=due,
            sent_s=result.sent_at - self._t0,
            first_token_s=None if result.first_token_at is None else result.first_token_at - self._t0,
            finished_s=result.finished_at - self._t0,
            prompt_tokens=result.prompt_tokens if result.usage_reported else len(tokens),
            cached_tokens=result.cached_tokens, completion_tokens=result.completion_tokens,
        )
        self._finished_at[req.id] = record.finished_s
        self._done[req.id].set()
        if self._bar is not None:
            self._bar.update()
        self._left[req.workflow_id] -= 1
        if self._left[req.workflow_id] == 0:
            self._live.discard(req.workflow_id)
            await self.target.instance_finished(req.workflow_id)
        return record

    async def _send(self, req: TraceRequest, tokens: list[int]) -> CallResult:
        extra: dict[str, Any] = {"ignore_eos": True}
        self._unsent[req.workflow_id] -= 1
        final = self._unsent[req.workflow_id] == 0
        extra.update(await self.target.before_request(req.workflow_id, req.agent_id, final))
        try:
            return await stream_completion(
                self.client, self.model, tokens, max_tokens=max(1, req.output_tokens), temperature=0.0,
                extra_body=extra,
            )
        except openai.APIError as exc:
            where = f" (trace line {req.line})" if req.line else ""
            raise ReplayError(f"request {req.id!r}{where} failed: {describe_error(exc)}") from exc
        finally:
            await self.target.after_request(req.workflow_id, req.agent_id)

    async def _start_workflow(self, workflow_id: str) -> None:
        """Starts (declares) the workflow once, however many of its roots are due at once."""
        task = self._starting.get(workflow_id)
        if task is None:
            graph = declared_graph(self.trace, workflow_id)
            task = asyncio.ensure_future(self.target.instance_started(workflow_id, graph))
            self._starting[workflow_id] = task
            self._live.add(workflow_id)
        await asyncio.shield(task)

    async def _finish_live(self) -> None:
        """After a failure: finish the workflows this replay started, so a rerun can declare them."""
        for wid in sorted(self._live):
            task = self._starting[wid]
            if not task.done() or task.cancelled() or task.exception() is not None:
                continue
            try:
                await self.target.instance_finished(wid)
            except SSchedulerError as exc:  # cleanup after an error: keep the first error visible
                log.warning("could not finish workflow %r after the failed replay: %s", wid, exc)
        self._live.clear()


async def replay_trace(
    trace: Trace | str | os.PathLike[str],
    base_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    target: str = "context_forge",
    concurrency: int | None = None,
    progress: bool | None = None,
    timeout_s: float = 3600.0,
) -> ReplayResult:
    """Loads `trace` (a `Trace` or a path), replays it against `base_url` and returns the records.
    `model` defaults to the first on `/v1/models`; retries are off so that timings stay honest."""
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    base = normalize_base_url(base_url)
    key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        client = openai.AsyncOpenAI(base_url=base, api_key=key, timeout=timeout_s, max_retries=0)
        try:
            name = model or await resolve_model(client)
            tgt = make_target(target, WorkflowControl(base, http, api_key=key))
            return await Replayer(trace, client, tgt, name, concurrency, progress).run()
        finally:
            await client.close()
