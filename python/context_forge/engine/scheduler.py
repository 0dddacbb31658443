"""Continuous batching with chunked prefill, page-based admission and preemption.

Every step builds one mixed batch:

1. each running request in decode feeds its last token; when its next token needs a new page and
   none can be freed (even by evicting cache), the most recently admitted request is preempted:
   its computed KV goes to the cache, its pages are released and it waits again at the front;
2. running requests in the middle of a chunked prefill continue, within the step's prefill budget
   (``chunked_prefill_size`` tokens);
3. waiting requests are admitted in arrival order while budget, ``max_running_requests``,
   ``max_prefill_tokens`` (pending tokens admitted per step) and pages allow. Admission allocates pages for the whole pending prompt at once and requires one
   spare page per running request, so a fresh admission is rarely preempted right away.
   A request whose cached prefix is still being loaded from the host (``KVManager`` answers
   ``WAITING``) keeps its place in the queue and the requests behind it are considered.

A preempted request is re-admitted like a new one whose prompt is its prompt plus the tokens it
already generated; its cached KV usually makes that a prefix hit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .kv_manager import WAITING, AdmitResult, KVManager
from .req_state import Phase, ReqState


@dataclass
class ScheduledSeq:
    """``num_tokens`` of ``state`` are fed this step; ``is_decode``: one generated token."""

    state: ReqState
    num_tokens: int
    is_decode: bool = False


@dataclass
class Batch:
    """What the model runs this step, in order; ``admitted`` lists prefix hits of new admissions."""

    seqs: list[ScheduledSeq] = field(default_factory=list)
    admitted: list[tuple[ReqState, AdmitResult]] = field(default_factory=list)
    preempted: list[ReqState] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)

    @property
    def prefill_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs if not s.is_decode)


class Scheduler:
    """Owns the waiting queue and the running batch; all methods run on the engine thread."""

    def __init__(self, kv: KVManager, chunked_prefill_size: int | None, max_running_requests: int,
                 max_prefill_tokens: int | None = None) -> None:
        if max_running_requests < 1:
            raise ValueError(f"max_running_requests must be >= 1, got {max_running_requests}")
        self.kv = kv
        self.prefill_budget = chunked_prefill_size if chunked_prefill_size and chunked_prefill_size > 0 else None
        self.max_running = max_running_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[ReqState] = deque()
        self.running: list[ReqState] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def busy_pages(self) -> int:
        """Device pages running requests hold plus those queued requests' prompts need (the
        prefetch guard's ``busy``: they are all admitted before a prefetched agent's request)."""
        ps = self.kv.page_size
        return (sum(len(st.page_table) for st in self.running)
                + sum(-(-len(st.all_ids) // ps) for st in self.waiting))

    def waiting_agents(self) -> set[tuple[str, str]]:
        """``(workflow_id, agent_id)`` of the queued requests that carry both."""
        return _agents(self.waiting)

    def active_agents(self) -> set[tuple[str, str]]:
        """``(workflow_id, agent_id)`` of the running and queued requests that carry both."""
        return _agents((*self.running, *self.waiting))

    def add(self, st: ReqState) -> None:
        st.phase = Phase.WAITING
        self.waiting.append(st)

    def schedule(self) -> Batch:
        """Decodes, chunked prefills, then admissions in arrival order. A request that finds no
        room stops ordinary admissions (later ones would take the pages it waits for), but a
        request whose prefix load already landed and is locked for it (``kv.holds_wait``) is still
        admitted: otherwise its lock pins the pages the blocked one needs, and with a small pool
        nothing moves again (measured: 16 concurrent workflows whose system prompts fill the
        pool twice over hung every policy). If room is still short with nothing running, every
        wait lock is dropped, so the next step can evict those prefixes for the head request."""
        batch = Batch()
        self._schedule_decodes(batch)
        budget = self.prefill_budget if self.prefill_budget is not None else float("inf")
        for st in self.running:
            if st.in_decode or budget <= 0:
                continue
            n = int(min(st.num_pending, budget))
            batch.seqs.append(ScheduledSeq(st, n))
            budget -= n
        admitted_tokens = 0
        i = 0
        blocked = False
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.max_running:
            st = self.waiting[i]
            if blocked and not self.kv.holds_wait(st):
                i += 1
                continue
            if (self.max_prefill_tokens is not None and admitted_tokens
                    and admitted_tokens + st.num_pending > self.max_prefill_tokens):
                break
            hit = self.kv.admit(st, reserve=len(self.running))
            if hit is WAITING:
                i += 1
                continue
            if hit is None:
                blocked = True
                i += 1
                continue
            del self.waiting[i]
            st.phase = Phase.RUNNING
            self.running.append(st)
            batch.admitted.append((st, hit))
            admitted_tokens += st.num_pending
            n = int(min(st.num_pending, budget))
            batch.seqs.append(ScheduledSeq(st, n))
            budget -= n
        if blocked and not self.running:
            self.kv.drop_waits()
        return batch

    def _schedule_decodes(self, batch: Batch) -> None:
        for st in list(self.running):
            if st.phase is not Phase.RUNNING or not st.in_decode:
                continue
            while not self.kv.ensure(st, 1):
                victim = self.running[-1]
                self.preempt(victim)
                batch.preempted.append(victim)
                if victim is st:
                    break
            else:
                batch.seqs.append(ScheduledSeq(st, 1, is_decode=True))
        batch.seqs = [s for s in batch.seqs if s.state.phase is Phase.RUNNING]

    def preempt(self, st: ReqState) -> None:
        """Release ``st``'s pages (its KV goes to the cache) and put it first in line again."""
        self.running.remove(st)
        self.kv.release(st)
        st.num_preemptions += 1
        st.phase = Phase.WAITING
        self.waiting.appendleft(st)

    def finish(self, st: ReqState) -> None:
        """``st`` is done: release its pages and forget it."""
        self.running.remove(st)
        self.kv.release(st)
        st.phase = Phase.FINISHED

    def remove(self, rid: str) -> ReqState | None:
        """Take request ``rid`` out wherever it is, releasing what it holds (abort)."""
        for st in self.running:
            if st.rid == rid:
                self.finish(st)
                return st
        for st in self.waiting:
            if st.rid == rid:
                self.waiting.remove(st)
                self.kv.forget(st)
                st.phase = Phase.FINISHED
                return st
        return None


def _agents(states: Iterable[ReqState]) -> set[tuple[str, str]]:
    return {(st.req.workflow_id, st.req.agent_id) for st in states
            if st.req.workflow_id is not None and st.req.agent_id is not None}
