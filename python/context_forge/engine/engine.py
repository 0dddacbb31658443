"""The serving engine: a background step loop over the scheduler, bridged to asyncio callers.

Threads: callers (the server's event loop) validate and submit requests and ask for aborts;
the engine thread owns the scheduler, the cache and the model. Requests and aborts cross over
through an inbox guarded by a condition variable (the loop sleeps on it when idle); outputs
cross back through ``loop.call_soon_threadsafe`` into one ``asyncio.Queue`` per request.

With the hierarchical cache, a loader worker thread (``prefetch.controller``) copies KV
host->device beside the loop for every policy (on-demand loads; lru's too). Where the policy
prefetches and ``enable_prefetch`` is on, workflow events also mark workflows for replanning (and
wake an idle loop); the loop replans once per step, under the engine lock, after the pressure
controller has applied the step's mode to the cache and the prefetcher.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import torch

from context_forge.config import ServerConfig
from context_forge.metrics import Metrics
from context_forge.workflow.errors import WorkflowError

from .builder import EngineParts, build
from .errors import DuplicateRequest, EngineError
from .output import OutputStream
from .pages import PageStates, page_states
from .req_state import ReqState
from .request import GenerateOutput, GenerateRequest
from .sampling import SampleSlot, make_generator, sample
from .scheduler import Batch
from .stats import EngineStats
from .validate import Limits, validate_request

if TYPE_CHECKING:
    from context_forge.model.config import ModelConfig
    from context_forge.prefetch.service import WorkflowPrefetcher

    from .workflows import SharedWorkflows

log = logging.getLogger(__name__)
_PREFETCH_POLL_S = 0.05
"""How often an idle loop checks for workflow changes made behind ``SharedWorkflows``' back."""
Emit = Callable[[GenerateOutput | BaseException], None]


class Engine:
    """The step loop over the parts ``builder.build`` makes: it drives the scheduler, the model
    runner, the KV manager and the pressure controller; the rest (tokenizer, workflows, the
    loader) is reached through ``parts``."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        p: EngineParts = build(config)
        self.parts = p
        self.config = p.config
        self.scheduler = p.scheduler
        self.runner = p.runner
        self.kv = p.kv
        self.pressure = p.pressure
        self.model_name: str = p.config.served_model_name or p.config.model_path
        self.context_len: int = p.config.context_length or p.model_config.context_len
        self.metrics = metrics if metrics is not None else Metrics()
        self.stats = EngineStats(self.metrics, p.device_pool, p.host_pool, p.cache, p.prefetch)
        self.limits = Limits(p.model_config.vocab_size, self.context_len, p.config.page_size,
                             p.device_pool.capacity)
        self._eos = set(getattr(p.tokenizer, "eos_token_ids", ()) or ()) | set(p.model_config.eos_token_id)
        self._seeds = random.Random(p.config.random_seed)
        self._lock = p.lock
        self._cv = threading.Condition(threading.Lock())
        self._inbox: list[ReqState] = []
        self._aborts: list[str] = []
        self._live: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._last_batch_empty = False
        self._idle_timeout: float | None = None
        if self.prefetch is not None:
            self.prefetch.controller.on_complete = lambda task: self._wake()
            self.prefetch.controller.on_issued = self._wake
            if self.prefetch.plans:
                self._idle_timeout = _PREFETCH_POLL_S
                p.workflows.add_listener(self._on_workflow_change)
            self.prefetch.start()
        self.page_states()  # the per-state gauges start out exact, before the first scrape

    @property
    def tokenizer(self) -> Any:
        return self.parts.tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.parts.model_config

    @property
    def workflows(self) -> SharedWorkflows:
        return self.parts.workflows

    @property
    def prefetch(self) -> WorkflowPrefetcher | None:
        """The loader (every policy, with the host tier), or None."""
        return self.parts.prefetch

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the step loop in a background thread (idempotent)."""
        if self._thread is not None:
            return
        # Everything built so far (model, pools, tokenizer) lives for the whole run: move it out of
        # the cyclic GC's generations so full collections in the step loop do not rescan it.
        gc.collect()
        gc.freeze()
        self._thread = threading.Thread(target=self._run, name="context-forge-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the loop; every unfinished request ends with ``finish_reason="abort"``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._drain_inbox()
            for st in list(self.scheduler.running) + list(self.scheduler.waiting):
                self._abort_state(st)
        if self.prefetch is not None:
            self.prefetch.stop()

    @property
    def live_requests(self) -> int:
        """Requests submitted and not yet finished or aborted."""
        with self._cv:
            return len(self._live)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    # ---------------------------------------------------------------- requests
    def generate(self, req: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """Validate ``req`` now (raising ``InvalidRequest``), then stream its outputs: ``async for``
        yields one ``GenerateOutput`` delta per token (the last one has ``finish_reason``).
        Closing the iterator early (client gone) aborts the request."""
        validate_request(req, self.limits, self.workflows)
        if req.rid in self._live:
            raise DuplicateRequest(req.rid)
        if self._stopping or self._error is not None:
            raise EngineError("the engine is not running" + (f": {self._error!r}" if self._error else ""))
        self.start()
        return self._stream(req)

    async def _stream(self, req: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerateOutput | BaseException] = asyncio.Queue()

        def emit(item: GenerateOutput | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is closed: nobody is listening any more
                self.abort(req.rid)

        self._submit(req, emit)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(req.rid)

    def _submit(self, req: GenerateRequest, emit: Emit) -> None:
        s = req.sampling
        stream = OutputStream(self.tokenizer, s, self._eos, self.context_len)
        seed = s.seed if s.seed is not None else self._seeds.getrandbits(63)
        st = ReqState(req=req, stream=stream, generator=make_generator(seed), emit=emit)
        with self._cv:
            if self._stopping:
                raise EngineError("the engine is shutting down")
            if req.rid in self._live:
                raise DuplicateRequest(req.rid)
            self._live.add(req.rid)
            self._inbox.append(st)
            self._cv.notify()

    def abort(self, rid: str) -> None:
        """End request ``rid`` wherever it is (``finish_reason="abort"``); unknown ids are ignored."""
        with self._cv:
            self._aborts.append(rid)
            self._cv.notify()

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._stopping or self._inbox or self._aborts or self.scheduler.has_work
                               or self._prefetch_marked()):
                        if not self._cv.wait(self._idle_timeout) and self._idle_timeout is not None:
                            break  # poll the tracker's change feed (see prefetch.service)
                    if self._stopping:
                        return
                    idle = not (self._inbox or self._aborts or self.scheduler.has_work)
                if idle:
                    with self._lock:
                        self._prefetch_tick()
                    continue
                if self.step() and self._last_batch_empty:
                    with self._cv:  # blocked (e.g. waiting for pages): do not spin
                        self._cv.wait(0.001)
        except BaseException as exc:  # a bug or a device failure: fail every request loudly
            log.exception("engine step loop failed")
            self._error = exc
            with self._lock:
                self._drain_inbox()
                sched = self.scheduler
                for st in list(sched.running) + list(sched.waiting):
                    self._forget(st)
                    st.emit(EngineError(f"engine step failed: {exc!r}"))
                sched.running.clear()
                sched.waiting.clear()

    def step(self) -> bool:
        """Run one scheduler step; returns whether work remains. Called by the loop thread (tests
        and benchmarks may call it directly on an engine that was never started)."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise EngineError("step() is driven by the engine thread once start() was called")
        with self._lock:
            self._drain_inbox()
            batch = self.scheduler.schedule()
            for st, hit in batch.admitted:
                self.stats.on_admit(hit)
                if not st.admitted_once:
                    st.admitted_once = True
                    st.cached_tokens = min(hit.device_hit + hit.host_hit, st.prompt_len)
        self._last_batch_empty = not batch.seqs
        logits = None
        if batch.seqs:
            if self.parts.transfer is not None:
                self.parts.transfer.fence()  # queued write-backs may still read pages this step writes
            logits = self.runner.forward(batch.seqs)
        with self._lock:
            if logits is not None:
                self._process(batch, logits)
            self._after_step(batch)
            self._prefetch_tick()  # the step's one planning pass, after pressure has acted
            return self.scheduler.has_work

    def _drain_inbox(self) -> None:
        with self._cv:
            new, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        for st in new:
            self._workflow_event(st, started=True)
            self.scheduler.add(st)
        for rid in aborts:
            gone = self.scheduler.remove(rid)
            if gone is not None:
                self._abort_state(gone, removed=True)

    def _process(self, batch: Batch, logits: torch.Tensor) -> None:
        rows, slots = [], []
        for i, s in enumerate(batch.seqs):
            st = s.state
            st.computed += s.num_tokens
            if st.num_pending == 0:
                rows.append(i)
                slots.append(SampleSlot(st.req.sampling, st.generator))
        if not rows:
            return
        tokens = sample(logits[rows], slots)
        for i, token in zip(rows, tokens):
            st = batch.seqs[i].state
            st.all_ids.append(token)
            text, reason = st.stream.on_token(token, st.num_output, len(st.all_ids))
            st.finish_reason = reason
            if reason is not None:
                self.scheduler.finish(st)
                self._forget(st)
            elif not st.prompt_cached:
                st.prompt_cached = True
                self.kv.share(st)
            self._emit_token(st, token, text)

    def _emit_token(self, st: ReqState, token: int, text: str) -> None:
        st.unsent_ids.append(token)
        st.unsent_text += text
        n = st.num_output
        if st.finish_reason is None and n > 1 and n % self.config.stream_interval:
            return
        out = st.output(st.unsent_ids, st.unsent_text)
        st.unsent_ids, st.unsent_text = [], ""
        st.emit(out)

    def _after_step(self, batch: Batch) -> None:
        sched = self.scheduler
        mode = self.pressure.step(self.kv.held_fraction)  # acts on the cache and the prefetcher
        self.stats.on_step(batch.prefill_tokens, len(batch.preempted), len(sched.running),
                           len(sched.waiting), mode)

    # ---------------------------------------------------------------- prefetch
    def _on_workflow_change(self, workflow_id: str) -> None:
        """``SharedWorkflows`` listener (engine lock held, any thread): replan that workflow."""
        assert self.prefetch is not None
        self.prefetch.mark(workflow_id)
        self._wake()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def _prefetch_marked(self) -> bool:
        return self.prefetch is not None and self.prefetch.plans and self.prefetch.has_dirty

    def _prefetch_tick(self) -> None:
        """Under the engine lock: fail on a broken prefetch worker, replan marked workflows."""
        pf = self.prefetch
        if pf is None:
            return
        if pf.error is not None:
            raise EngineError(f"prefetch worker failed: {pf.error!r}")
        pf.tick()

    # ---------------------------------------------------------------- endings
    def _abort_state(self, st: ReqState, removed: bool = False) -> None:
        if not removed:
            self.scheduler.remove(st.rid)
        text, _ = st.stream.finish("abort")
        st.finish_reason = "abort"
        self._forget(st)
        st.emit(st.output(st.unsent_ids, st.unsent_text + text))
        st.unsent_ids, st.unsent_text = [], ""

    def _forget(self, st: ReqState) -> None:
        """Bookkeeping of a request that left the engine, done before its last output is sent so
        that a caller reacting to that output sees workflows and request ids up to date."""
        self._workflow_event(st, started=False)
        with self._cv:
            self._live.discard(st.rid)

    def _workflow_event(self, st: ReqState, started: bool) -> None:
        wid, aid = st.req.workflow_id, st.req.agent_id
        if wid is None or aid is None:
            return
        try:
            if started:
                self.workflows.on_request(wid, aid)
            else:
                self.workflows.on_request_finished(wid, aid)
        except WorkflowError as exc:  # e.g. the workflow was finished while the request ran
            log.debug("workflow update for %s ignored: %s", st.rid, exc)

    # ---------------------------------------------------------------- checks
    def page_states(self) -> PageStates:
        """Device and host pages by state, one consistent snapshot (also published as the
        ``device_pages`` / ``host_pages`` gauges). Takes the engine lock: call it off the event loop."""
        with self._lock:
            pages = page_states(self.kv, self.parts.host_pool)
            self.stats.publish_pages(pages)
        return pages

    def check_invariants(self) -> None:
        """Assert page accounting (free + cached + in-use == total) and cache invariants."""
        with self._lock:
            self.kv.check()
