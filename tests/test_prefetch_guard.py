"""PrefetchGuard over a real two-tier radix cache: protected KV survives eviction until its
request, a plan change, the workflow's end or an admission short of room lets it go."""

from __future__ import annotations

import pytest
from context_forge.cache import CountingTransfer, PagePool, RadixCache, get_policy
from context_forge.prefetch.guard import DEEP_HEADROOM, HEADROOM, PrefetchGuard

PS = 2
DEVICE = 20


def make() -> RadixCache:
    return RadixCache(PS, PagePool(DEVICE, "device"), PagePool(64, "host"), get_policy("lru"), CountingTransfer())


def insert(cache: RadixCache, tokens: list[int], agent: str):
    pages = cache.alloc_device(len(tokens) // PS)
    res = cache.insert(tokens, pages, agent)
    cache.device_pool.free(res.redundant(pages))
    return res.node


def prefetched(cache: RadixCache, guard: PrefetchGuard, task: int, wf: str, agent: str, tokens: list[int],
               steps: float = 0.0):
    """Insert ``tokens``, push them to the host only, then load them back and protect them."""
    node = insert(cache, tokens, agent)
    cache.evict_device(cache.device_cached_pages)
    assert node.device_pages is None and node.host_pages
    plan = cache.begin_load(node)
    assert plan is not None
    cache.transfer.host_to_device(plan.host_pages, plan.device_pages)
    cache.finish_loading(plan.ticket, plan.nodes)
    guard.protect(task, wf, agent, node, len(plan.device_pages), steps)
    return node


def fill_device(cache: RadixCache, start: int) -> int:
    """Insert unrelated prompts until the device is full of other KV: how many pages they hold."""
    held = 0
    while cache.device_pool.num_free:
        n = min(4, cache.device_pool.num_free)
        insert(cache, list(range(start, start + n * PS)), "other")
        start += n * PS
        held += n
    return held


def test_protected_prefetch_survives_eviction_until_claimed() -> None:
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=10)
    node = prefetched(cache, guard, 1, "wf", "coder", list(range(1000, 1008)))
    fill_device(cache, 5000)
    assert cache.evict_device(DEVICE) < DEVICE
    assert node.device_pages is not None, "a protected prefetch was evicted"
    guard.claimed_by("wf", "coder")
    assert len(guard) == 0 and guard.pages == 0 and guard.released_unused == 0
    cache.evict_device(DEVICE)
    assert node.device_pages is None
    cache.check(external_device_pages=0)


@pytest.mark.parametrize("how", ["replanned", "finished", "oldest", "all"])
def test_protection_goes_when_no_longer_due(how: str) -> None:
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=10)
    node = prefetched(cache, guard, 7, "wf", "coder", list(range(100, 108)))
    if how == "replanned":
        guard.replanned("wf", {"coder"})
        assert len(guard) == 1, "a replan that still lists the agent keeps its protection"
        guard.replanned("wf", {"reviewer"})
    elif how == "finished":
        guard.replanned("other-wf", ())
        assert len(guard) == 1
        guard.replanned("wf", ())
    elif how == "oldest":
        assert guard.release_least_urgent()
        assert not guard.release_least_urgent()
    else:
        guard.release_all()
    assert len(guard) == 0 and guard.pages == 0 and guard.released_unused == 1
    assert node.lock_ref == 0
    cache.evict_device(DEVICE)
    assert node.device_pages is None
    cache.check(external_device_pages=0)


def test_release_least_urgent_goes_latest_due_then_newest() -> None:
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=20)
    a = prefetched(cache, guard, 1, "wf", "a", list(range(100, 104)), steps=1)
    b = prefetched(cache, guard, 2, "wf", "b", list(range(200, 204)), steps=0)
    c = prefetched(cache, guard, 3, "wf", "c", list(range(300, 304)), steps=0)
    guard.release_least_urgent()
    assert a.lock_ref == 0 and b.lock_ref == 1 and c.lock_ref == 1, "the agent due latest goes first"
    guard.release_least_urgent()
    assert c.lock_ref == 0 and b.lock_ref == 1, "among equals the newest goes (the oldest was planned first)"
    guard.protect(2, "wf", "b", b, 2)
    assert b.lock_ref == 1 and guard.pages == 2, "protecting the same task twice is a no-op"


def test_replan_with_steps_updates_the_release_order() -> None:
    """A protection planned for a later step moves up when a replan says its agent is due now."""
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=20)
    a = prefetched(cache, guard, 1, "wf", "a", list(range(100, 104)), steps=0)
    b = prefetched(cache, guard, 2, "wf", "b", list(range(200, 204)), steps=1)
    guard.replanned("wf", {"a": 2.0, "b": 0.0})
    guard.release_least_urgent()
    assert a.lock_ref == 0 and b.lock_ref == 1


def test_room_counts_the_pages_requests_will_allocate() -> None:
    """A prefetch is of use only if its request fits beside it: ``room`` adds the pages the agent's
    latest request allocated beyond its cached prefix, for the new prefetch and for held ones."""
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=DEVICE)
    limit = int(HEADROOM * DEVICE)
    assert guard.room(2, busy_pages=limit - 2, agent_id="coder")
    guard.note_request("coder", 3)
    assert guard.own_estimate("coder") == 3 and guard.own_estimate(None) == 0
    assert not guard.room(2, busy_pages=limit - 2, agent_id="coder"), "the coder's request would not fit"
    assert guard.room(2, busy_pages=limit - 5, agent_id="coder")
    prefetched(cache, guard, 1, "wf", "coder", list(range(100, 104)))
    assert guard.pages == 2 and guard.own_pages == 3
    assert guard.room(1, busy_pages=limit - 6) and not guard.room(1, busy_pages=limit - 5), \
        "a held prefetch's request counts too"
    guard.claimed_by("wf", "coder")
    assert guard.pages == 0 and guard.own_pages == 0


def test_release_spares_the_agents_it_is_told_to_keep() -> None:
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=20)
    a = prefetched(cache, guard, 1, "wf", "a", list(range(100, 104)))
    b = prefetched(cache, guard, 2, "wf", "b", list(range(200, 204)))
    assert guard.release_least_urgent(keep={("wf", "a")})
    assert a.lock_ref == 1 and b.lock_ref == 0
    assert not guard.release_least_urgent(keep={("wf", "a")}) and a.lock_ref == 1


def test_room_budget_and_busy_pages() -> None:
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=4)
    assert guard.room(8), "one prefetch always fits while none is held"
    assert not guard.room(4, busy_pages=int(HEADROOM * DEVICE) - 3), "it would not fit beside busy pages"
    prefetched(cache, guard, 1, "wf", "a", list(range(100, 106)))
    assert guard.pages == 3
    assert guard.room(1) and not guard.room(2)
    with pytest.raises(ValueError, match="budget_pages"):
        PrefetchGuard(cache, budget_pages=-1)


def test_room_shrinks_with_distance_and_doubt() -> None:
    """An agent due later, or only likely, gets less of the pool; a prediction beyond the next
    call gets none."""
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=DEVICE)
    near = int(HEADROOM * DEVICE) - 2
    deep = int(DEEP_HEADROOM * DEVICE) - 2
    assert guard.room(2, busy_pages=near, steps=0)
    assert not guard.room(2, busy_pages=near, steps=1), "due later: only DEEP_HEADROOM of the pool"
    assert guard.room(2, busy_pages=deep, steps=2)
    assert not guard.room(2, busy_pages=int(0.5 * HEADROOM * DEVICE) - 1, prob=0.5), "room scales with prob"
    assert guard.room(2, busy_pages=int(0.5 * HEADROOM * DEVICE) - 2, prob=0.5)
    assert not guard.room(1, steps=1, prob=0.9), "a prediction beyond the next call is not loaded"
    assert guard.room(1, steps=1, prob=1.0)


def test_room_needs_the_requests_of_agents_due_no_later_to_fit_in_the_pool() -> None:
    """Workers due at once that do not fit beside each other arrive in any order, and the first
    to come release the others' protections: a prefetch is issued only if the requests of its
    workflow's other agents due no later (latest replan; not running, queued or protected) fit in
    the whole pool beside everything ``room`` already counts."""
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=DEVICE)
    for worker in ("w0", "w1", "w2"):
        guard.note_request(worker, 4)
    guard.replanned("wf", {"w0": 0.0, "w1": 0.0, "w2": 0.0, "reducer": 1.0})
    assert guard.ahead_pages("wf", "w0", 0.0) == 8
    busy = DEVICE - 2 - 4 - 8  # w0's prefetch (2) and its request (4) fit; w1's and w2's do not
    assert guard.room(2, busy - 1, agent_id="w0"), "without the workflow nothing is ahead"
    assert not guard.room(2, busy + 1, agent_id="w0", workflow_id="wf")
    assert guard.room(2, busy, agent_id="w0", workflow_id="wf")
    assert guard.room(2, busy + 4, agent_id="w0", workflow_id="wf", active={("wf", "w1")}), \
        "a running or queued request is in busy already"
    assert guard.ahead_pages("other", "w0", 0.0) == 0 and guard.ahead_pages("wf", "reducer", 1.0) == 12
    prefetched(cache, guard, 1, "wf", "w2", list(range(100, 104)))
    assert guard.ahead_pages("wf", "w0", 0.0) == 4, "a protected agent counts with its protection"
    guard.replanned("wf", ())
    assert guard.ahead_pages("wf", "w0", 0.0) == 0, "the workflow ended"


def test_room_needs_the_host_only_kv_of_targets_due_no_later_to_fit_too() -> None:
    """The other targets of the workflow due no later that are not protected yet are loaded after
    this prefetch or on demand when their requests come: ``pending_pages`` of them join the
    requests that must fit in the whole pool."""
    cache = make()
    guard = PrefetchGuard(cache, budget_pages=DEVICE)
    guard.note_request("w0", 4)
    guard.replanned("wf", {"w0": 0.0, "w1": 0.0})
    busy = DEVICE - 2 - 4 - 6
    assert guard.room(2, busy, agent_id="w0", workflow_id="wf", pending_pages=6)
    assert not guard.room(2, busy, agent_id="w0", workflow_id="wf", pending_pages=7)
    assert guard.room(2, busy, agent_id="w0", workflow_id="wf"), "nothing pending"
