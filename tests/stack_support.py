"""The engine's stack without a model, shared by the prefetch and scheduler tests: a copier whose
loads can be held in flight, request states, and the scheduler loop with a pretend model (each
scheduled token is "computed"; a finished prefill appends one output token)."""

from __future__ import annotations

import itertools
import threading

import torch
from context_forge.engine.output import OutputStream
from context_forge.engine.req_state import ReqState
from context_forge.engine.request import GenerateRequest, SamplingParams
from context_forge.engine.scheduler import Batch
from context_forge.model.tokenizer import ByteTokenizer
from context_forge.prefetch import CpuCopier
from engine_support import prompt

__all__ = ["GatedCopier", "PretendModelLoop", "prompt", "request_state"]

TOK = ByteTokenizer()
_ids = itertools.count()


class GatedCopier(CpuCopier):
    """The real CPU copier; units wait until ``gate`` is open (keeps a load in flight), and
    ``waiting`` is set once one does."""

    def __init__(self, *args: object, open_gate: bool = False) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.waiting = threading.Event()

    def _issue(self, state, unit, host_pages, device_pages) -> None:  # type: ignore[no-untyped-def]
        self.waiting.set()
        assert self.gate.wait(10), "gate never opened"
        super()._issue(state, unit, host_pages, device_pages)


def request_state(tokens: list[int], max_tokens: int = 2, workflow_id: str | None = None,
                  agent_id: str | None = None) -> ReqState:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    req = GenerateRequest(f"r{next(_ids)}", tokens, params, workflow_id=workflow_id, agent_id=agent_id)
    return ReqState(req=req, stream=OutputStream(TOK, params, (), 10_000), generator=torch.Generator(),
                    emit=lambda out: None)


class PretendModelLoop:
    """``step`` and ``run`` over a stack's ``lock``, ``pf`` (prefetcher), ``sched`` and ``kv``."""

    lock: threading.RLock

    def step(self) -> tuple[list[ReqState], Batch]:
        """One scheduler step: the requests that finished, and the batch."""
        with self.lock:
            self.pf.tick()  # type: ignore[attr-defined]
            batch = self.sched.schedule()  # type: ignore[attr-defined]
            done = []
            for s in batch.seqs:
                st = s.state
                st.computed += s.num_tokens
                if st.num_pending == 0:
                    st.all_ids.append(7)
                    if st.num_output >= st.req.sampling.max_tokens:
                        self.sched.finish(st)  # type: ignore[attr-defined]
                        done.append(st)
            self.kv.check()  # type: ignore[attr-defined]
            return done, batch

    def run(self, *states: ReqState, max_steps: int = 1000) -> None:
        """Queue ``states`` and step until nothing is left; an AssertionError when that takes more
        than ``max_steps`` steps (the scheduler stopped making progress)."""
        with self.lock:
            for st in states:
                self.sched.add(st)  # type: ignore[attr-defined]
        for _ in range(max_steps):
            if not self.sched.has_work:  # type: ignore[attr-defined]
                return
            self.step()
            if self.sched.waiting and not self.sched.running:  # type: ignore[attr-defined]
                self.pf.wait_idle()  # type: ignore[attr-defined]
        raise AssertionError("scheduler did not finish")
