"""Pages by state (engine.pages): free, cached, in_use, loading over the real KVManager, RadixCache
and pools; the four always sum to the capacity and agree with the manager's own accounting."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.cache.policy import get_policy
from context_forge.kv.pool import PagePool
from context_forge.cache.tiered import RadixCache
from context_forge.engine.kv_manager import KVManager
from context_forge.engine.output import OutputStream
from context_forge.engine.pages import PageStates, page_states
from context_forge.engine.req_state import ReqState
from context_forge.engine.request import GenerateRequest, SamplingParams
from context_forge.model.tokenizer import ByteTokenizer

PS = 4
TOK = ByteTokenizer()


def make_state(rid: str, prompt: list[int]) -> ReqState:
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    return ReqState(req=GenerateRequest(rid, prompt, params), stream=OutputStream(TOK, params, (), 10_000),
                    generator=torch.Generator(), emit=lambda out: None)


def make_kv(pages: int, host_pages: int = 0) -> tuple[KVManager, PagePool | None]:
    pool = PagePool(pages, "device")
    host = PagePool(host_pages, "host") if host_pages else None
    cache = RadixCache(PS, pool, host, get_policy("lru"), write_policy="write_back")
    return KVManager(PS, pool, cache), host


def run_prompt(kv: KVManager, st_: ReqState) -> None:
    """Admit and pretend to prefill the whole prompt (as the model would)."""
    assert kv.admit(st_) is not None
    st_.computed = len(st_.all_ids)


def states(kv: KVManager, host: PagePool | None) -> PageStates:
    pages = page_states(kv, host)
    pages.check()
    kv.check()
    return pages


def test_running_request_pages_are_in_use_then_cached_after_release() -> None:
    kv, host = make_kv(32)
    assert states(kv, host).device() == {"free": 32, "cached": 0, "in_use": 0, "loading": 0}
    a = make_state("a", list(range(17)))  # 17 tokens: 5 pages
    run_prompt(kv, a)
    assert states(kv, host).device() == {"free": 27, "cached": 0, "in_use": 5, "loading": 0}
    kv.release(a)  # 4 whole pages go to the tree, the partial one is freed
    assert states(kv, host).device() == {"free": 28, "cached": 4, "in_use": 0, "loading": 0}


def test_tree_pages_a_running_request_reuses_count_as_in_use_not_cached() -> None:
    kv, host = make_kv(32)
    prompt = list(range(17))
    a = make_state("a", prompt)
    run_prompt(kv, a)
    kv.release(a)
    b = make_state("b", prompt + [99, 98, 97])  # reuses the 4 cached pages, owns 1 more
    run_prompt(kv, b)
    pages = states(kv, host)
    assert pages.device() == {"free": 27, "cached": 0, "in_use": 5, "loading": 0}
    assert kv.in_use == 1 and kv.locked_pages == 4
    kv.release(b)
    assert states(kv, host).in_use == 0


def test_pages_a_host_load_lands_into_are_loading_until_it_finishes() -> None:
    kv, host = make_kv(16, host_pages=32)
    cache = kv.cache
    assert cache is not None
    a = make_state("a", list(range(17)))
    run_prompt(kv, a)
    kv.release(a)
    assert cache.evict_device(16) == 4  # written back to host, off the device
    pages = states(kv, host)
    assert pages.device() == {"free": 16, "cached": 0, "in_use": 0, "loading": 0}
    assert pages.host() == {"cached": 4, "free": 28}
    m = cache.match(list(range(16)))
    plan = cache.begin_load(m.last_node)
    assert plan is not None and len(plan.device_pages) == 4
    loading = states(kv, host)
    assert loading.device() == {"free": 12, "cached": 0, "in_use": 0, "loading": 4}
    cache.finish_loading(plan.ticket, plan.nodes)
    assert states(kv, host).device() == {"free": 12, "cached": 4, "in_use": 0, "loading": 0}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit", "release", "evict", "load"]), st.integers(0, 5)),
                max_size=40))
def test_states_always_sum_to_capacity(ops: list[tuple[str, int]]) -> None:
    kv, host = make_kv(24, host_pages=48)
    cache = kv.cache
    assert cache is not None
    running: list[ReqState] = []
    plans = []
    for i, (op, arg) in enumerate(ops):
        if op == "admit":
            st_ = make_state(f"r{i}", [arg] * 4 + list(range(arg * 3 + 5)))
            if kv.admit(st_) is not None:
                st_.computed = len(st_.all_ids)
                running.append(st_)
        elif op == "release" and running:
            kv.release(running.pop(arg % len(running)))
        elif op == "evict":
            cache.evict_device(arg + 1)
        elif op == "load":
            m = cache.match([arg] * 4 + list(range(arg * 3 + 5)))
            if m.host_len:
                plan = cache.begin_load(m.last_node)
                if plan is not None:
                    plans.append(plan)
        if plans and arg % 2:
            plan = plans.pop(0)
            cache.finish_loading(plan.ticket, plan.nodes)
        pages = states(kv, host)
        landing = {p for plan in plans for p in plan.device_pages}
        assert pages.loading == len(landing)
        assert pages.in_use == kv.in_use + sum(1 for p in kv.shared_page_ids() if p not in landing)
    for st_ in running:
        kv.release(st_)
    for plan in plans:
        cache.finish_loading(plan.ticket, plan.nodes)
    final = states(kv, host)
    assert final.in_use == 0 and final.loading == 0
