"""Scheduler + KVManager over the real PagePool and RadixCache, without running a model.

The scheduler never looks at logits, so each step is completed here by advancing what the model
would have computed and appending an arbitrary next token. That exercises admission, chunking,
prefix sharing, preemption, abort and release with the exact code the engine runs.
"""

from __future__ import annotations

import random

import torch
from context_forge.cache.policy import get_policy
from context_forge.kv.pool import PagePool
from context_forge.cache.tiered import RadixCache
from context_forge.engine.kv_manager import KVManager
from context_forge.engine.output import OutputStream
from context_forge.engine.req_state import Phase, ReqState
from context_forge.engine.request import GenerateRequest, SamplingParams
from context_forge.engine.scheduler import Scheduler
from context_forge.model.tokenizer import ByteTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

PS = 4
TOK = ByteTokenizer()


def make_state(rid: str, prompt: list[int], max_tokens: int) -> ReqState:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    req = GenerateRequest(rid, prompt, params)
    return ReqState(req=req, stream=OutputStream(TOK, params, (), 10_000),
                    generator=torch.Generator(), emit=lambda out: None)


def make_scheduler(pages: int, cached: bool = True, host_pages: int = 0,
                   chunk: int = 8, max_running: int = 64) -> Scheduler:
    pool = PagePool(pages, "device")
    cache = None
    if cached:
        host = PagePool(host_pages, "host") if host_pages else None
        cache = RadixCache(PS, pool, host, get_policy("lru"), write_policy="write_back")
    return Scheduler(KVManager(PS, pool, cache), chunk, max_running)


def run_step(sched: Scheduler, rng: random.Random) -> list[ReqState]:
    """One scheduler step with a pretend model; returns the requests that finished."""
    batch = sched.schedule()
    done = []
    for s in batch.seqs:
        state = s.state
        assert state.phase is Phase.RUNNING
        assert len(state.page_table) * PS >= state.computed + s.num_tokens
        state.computed += s.num_tokens
        if state.num_pending == 0:
            state.all_ids.append(rng.randrange(256))
            if state.num_output >= state.req.sampling.max_tokens:
                sched.finish(state)
                done.append(state)
            elif not state.prompt_cached:
                state.prompt_cached = True
                sched.kv.share(state)
    return done


def drain(sched: Scheduler, rng: random.Random, limit: int = 10_000) -> list[ReqState]:
    finished = []
    for _ in range(limit):
        if not sched.has_work:
            return finished
        finished += run_step(sched, rng)
        sched.kv.check()
    raise AssertionError("scheduler did not finish its work")


def test_chunked_prefill_respects_budget_and_completes():
    sched = make_scheduler(pages=64, chunk=8)
    sched.add(make_state("a", list(range(30)), 3))
    sched.add(make_state("b", list(range(100, 121)), 3))
    batch = sched.schedule()
    assert batch.prefill_tokens <= 8
    assert [s.num_tokens for s in batch.seqs] == [8]
    rng = random.Random(0)
    for s in batch.seqs:
        s.state.computed += s.num_tokens
    done = drain(sched, rng)
    assert sorted(d.rid for d in done) == ["a", "b"]
    assert all(d.num_output == 3 for d in done)
    assert sched.kv.in_use == 0


def test_second_request_reuses_shared_prompt_pages_while_first_runs():
    sched = make_scheduler(pages=64, chunk=64)
    prompt = list(range(17))
    first = make_state("first", prompt, 50)
    sched.add(first)
    rng = random.Random(1)
    run_step(sched, rng)  # prefill of the first request, then its prompt pages are shared
    assert first.shared_pages == 4
    second = make_state("second", prompt + [99], 2)
    sched.add(second)
    batch = sched.schedule()
    hits = {st.rid: hit for st, hit in batch.admitted}
    assert hits["second"].device_hit == 16
    assert second.page_table[:4] == first.page_table[:4]
    sched.kv.check()


def test_decode_out_of_pages_preempts_newest_and_everything_completes():
    sched = make_scheduler(pages=12, chunk=64)
    for i in range(4):
        sched.add(make_state(f"r{i}", [i * 10 + j for j in range(8)], 24))
    rng = random.Random(2)
    preempted = 0
    for _ in range(1000):
        if not sched.has_work:
            break
        before = {s.rid: s.num_preemptions for s in list(sched.running) + list(sched.waiting)}
        run_step(sched, rng)
        preempted += sum(s.num_preemptions - before.get(s.rid, 0)
                         for s in list(sched.running) + list(sched.waiting))
        sched.kv.check()
    assert not sched.has_work
    assert preempted > 0
    assert sched.kv.in_use == 0


def test_remove_releases_running_and_waiting_requests():
    sched = make_scheduler(pages=16, chunk=64, max_running=1)
    sched.add(make_state("run", list(range(10)), 5))
    sched.add(make_state("wait", list(range(50, 60)), 5))
    run_step(sched, random.Random(3))
    assert [s.rid for s in sched.running] == ["run"] and [s.rid for s in sched.waiting] == ["wait"]
    assert sched.remove("wait").phase is Phase.FINISHED
    assert sched.remove("run").phase is Phase.FINISHED
    assert sched.remove("run") is None
    assert not sched.has_work and sched.kv.in_use == 0
    sched.kv.check()


def test_no_cache_frees_everything():
    sched = make_scheduler(pages=20, cached=False)
    for i in range(3):
        sched.add(make_state(f"n{i}", list(range(i, i + 9)), 6))
    drain(sched, random.Random(4))
    assert sched.kv.pool.num_free == 20


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3), st.integers(1, 30), st.integers(1, 12)),
        st.tuples(st.just("step"), st.integers(1, 4)),
        st.tuples(st.just("abort"), st.integers(0, 40)),
    ),
    min_size=1, max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, pages=st.integers(12, 40), host=st.sampled_from([0, 24]), chunk=st.sampled_from([4, 8, 64]))
def test_page_accounting_invariant_under_random_traffic(ops, pages, host, chunk):
    """free + cached + in-use == total after every operation, whatever arrives, runs or is aborted;
    every request that is not aborted completes with exactly max_tokens tokens."""
    sched = make_scheduler(pages=pages, host_pages=host, chunk=chunk)
    rng = random.Random(5)
    ids: list[str] = []
    aborted: set[str] = set()
    finished: dict[str, ReqState] = {}
    for op in ops:
        if op[0] == "add":
            _, base, length, max_tokens = op
            rid = f"q{len(ids)}"
            prompt = [base] * 4 + [rng.randrange(4) for _ in range(length)]
            if -(-(len(prompt) + max_tokens) // PS) <= pages:  # what validation guarantees
                ids.append(rid)
                sched.add(make_state(rid, prompt, max_tokens))
        elif op[0] == "step":
            for _ in range(op[1]):
                finished.update((s.rid, s) for s in run_step(sched, rng))
        elif ids:
            rid = ids[op[1] % len(ids)]
            if sched.remove(rid) is not None:
                aborted.add(rid)
        sched.kv.check()
    finished.update((s.rid, s) for s in drain(sched, rng))
    assert sched.kv.in_use == 0 and sched.kv.locked_pages == 0
    assert set(finished) | aborted == set(ids)
    assert all(s.num_output == s.req.sampling.max_tokens for s in finished.values())
