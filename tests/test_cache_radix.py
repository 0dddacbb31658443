"""Radix tree and two-tier cache: matching, insertion, splitting, tiers, locking (no model needed)."""

import pytest

from context_forge.cache import CountingTransfer, PagePool, RadixCache, get_policy


def make_cache(dev=16, host=32, page_size=2, write_policy="write_back"):
    dp = PagePool(dev, "device")
    hp = PagePool(host, "host") if host else None
    return RadixCache(page_size, dp, hp, get_policy("lru"), CountingTransfer(), write_policy)


def put(cache, tokens, agent=None):
    """Insert ``tokens`` as a finished request would: fresh pages for the whole key, free the redundant ones."""
    n = len(tokens) // cache.page_size
    pages = cache.alloc_device(n)
    assert pages is not None
    res = cache.insert(tokens, pages, agent)
    cache.device_pool.free(res.redundant(pages))
    return res


def test_pool_all_or_nothing_and_double_free():
    pool = PagePool(4, "p")
    assert pool.alloc(5) is None and pool.num_free == 4
    pages = pool.alloc(3)
    assert sorted(pages) == pages and len(set(pages)) == 3
    pool.free(pages[:1])
    with pytest.raises(ValueError, match="double free"):
        pool.free(pages[:1])
    with pytest.raises(ValueError, match="out of range"):
        pool.free([99])
    pool.check()


def test_match_is_page_aligned_and_splits():
    cache = make_cache(page_size=4)
    put(cache, list(range(12)))
    m = cache.match(list(range(8)) + [100, 101, 102, 103])
    assert (m.device_len, m.host_len) == (8, 0)
    assert len(m.device_pages) == 2
    # the split left two nodes on the path root -> [0..8) -> [8..12)
    assert cache.num_nodes == 2
    # a partial page is never matched
    assert cache.match(list(range(7))).device_len == 4
    cache.check(external_device_pages=0)


def test_insert_reports_already_cached_and_redundant_pages():
    cache = make_cache(page_size=2)
    first = put(cache, [1, 2, 3, 4])
    assert first.prefix_len == 0
    pages = cache.device_pool.alloc(3)
    res = cache.insert([1, 2, 3, 4, 5, 6], pages, None)
    assert res.prefix_len == 4
    assert res.pages[:2] == first.pages and res.pages[2] == pages[2]
    assert res.redundant(pages) == pages[:2]
    cache.device_pool.free(res.redundant(pages))
    cache.check(external_device_pages=0)


def test_page_size_one():
    cache = make_cache(page_size=1, dev=8)
    put(cache, [5, 6, 7])
    put(cache, [5, 6, 9])
    assert cache.match([5, 6, 7, 8]).device_len == 3
    assert cache.match([5, 9]).device_len == 1
    cache.check(external_device_pages=0)


def test_split_keeps_annotations():
    cache = make_cache(page_size=2)
    put(cache, [1, 2, 3, 4, 5, 6], agent="planner")
    node = cache.match([1, 2, 3, 4, 5, 6]).last_node
    cache.lock(node)
    cache.match([1, 2, 3, 4, 9, 9], agent_id="coder")
    upper = cache.match([1, 2, 3, 4], touch=False).last_node
    assert upper is not node and node.parent is upper
    assert upper.agents == {"planner", "coder"} and "planner" in node.agents
    assert upper.lock_ref == node.lock_ref == 1
    cache.unlock(node)
    cache.check(external_device_pages=0)


def test_device_eviction_writes_back_then_load_back_restores():
    cache = make_cache(dev=6, host=12, page_size=2)
    put(cache, list(range(6)))
    put(cache, list(range(100, 106)))
    assert cache.device_pool.num_free == 0
    assert cache.evict_device(3) == 3
    assert cache.stats.written_back_pages == 3
    m = cache.match(list(range(6)))
    assert m.device_len == 0 and m.host_len == 6
    assert cache.load_back(m.last_node) == 6
    assert cache.match(list(range(6))).device_len == 6
    assert cache.transfer.pages_to_device == 3
    cache.check(external_device_pages=0)


def test_eviction_without_host_room_drops():
    cache = make_cache(dev=4, host=0, page_size=2)
    put(cache, [1, 2, 3, 4])
    assert cache.evict_device(2) == 2
    assert cache.num_nodes == 0 and cache.stats.dropped_pages == 0
    m = cache.match([1, 2, 3, 4])
    assert m.total_len == 0
    cache.check(external_device_pages=0)


def test_locked_node_is_never_evicted():
    cache = make_cache(dev=4, host=8, page_size=2)
    put(cache, [1, 2, 3, 4])
    node = cache.match([1, 2, 3, 4]).last_node
    cache.lock(node)
    assert cache.evict_device(2) == 0
    assert node.device_pages is not None
    cache.unlock(node)
    assert cache.evict_device(2) == 2
    with pytest.raises(RuntimeError, match="unlock of unlocked"):
        cache.unlock(node)


def test_host_eviction_is_leaf_first_and_spares_device_pages():
    cache = make_cache(dev=8, host=4, page_size=1, write_policy="write_through")
    put(cache, [1, 2])
    put(cache, [1, 2, 3, 4])
    # everything is on device with host copies; host eviction must not drop them
    assert cache.evict_host(4) == 0
    assert cache.evict_device(8) >= 4
    assert cache.evict_host(1) >= 1
    m = cache.match([1, 2, 3, 4], touch=False)
    assert m.host_len == 2  # the leaf [3, 4] went first; the shared prefix stays
    cache.check(external_device_pages=0)


def test_write_through_backs_up_at_insert():
    cache = make_cache(dev=8, host=8, page_size=2, write_policy="write_through")
    put(cache, [1, 2, 3, 4])
    assert cache.host_cached_pages == 2 and cache.transfer.pages_to_host == 2


def test_write_through_selective_backs_up_hot_nodes():
    cache = make_cache(dev=8, host=8, page_size=2, write_policy="write_through_selective")
    put(cache, [1, 2, 3, 4])
    assert cache.host_cached_pages == 0
    cache.match([1, 2, 3, 4])
    cache.match([1, 2, 3, 4])
    assert cache.host_cached_pages == 2


def test_host_adoption_on_reinsert():
    cache = make_cache(dev=4, host=8, page_size=2)
    put(cache, [1, 2, 3, 4])
    cache.evict_device(2)
    pages = cache.device_pool.alloc(2)
    res = cache.insert([1, 2, 3, 4], pages, None)
    assert res.prefix_len == 4 and res.pages == pages and res.redundant(pages) == []
    assert cache.match([1, 2, 3, 4]).device_len == 4
    cache.check(external_device_pages=0)


def test_unknown_policy_and_bad_args():
    with pytest.raises(ValueError, match="unknown eviction policy 'mru'"):
        get_policy("mru")
    with pytest.raises(ValueError, match="page_size"):
        RadixCache(0, PagePool(1))
    with pytest.raises(ValueError, match="write_policy"):
        RadixCache(1, PagePool(1), write_policy="sometimes")
