"""Property: whatever requests arrive together over a small pool whose shared prefixes sit on the
host, every one of them finishes, and the pages add up after each batch.

The engine's stack without the model (``test_prefetch_protection.Stack``: real buffers, cache,
scheduler, KV manager and prefetcher with its worker thread and the CPU copier). Each example
caches a few system prompts, sends them all to the host, then submits random requests over those
prompts at once: the head of the queue may find no room while requests behind it hold their landed
loads locked, the shape that once stopped the engine for good."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack_support import prompt
from test_prefetch_protection import PAGES, PS, Stack, state

SYSTEM_PAGES = (6, 9, 12)
"""Three system prompts: two of them loaded back fill most of the 32-page pool."""

requests = st.lists(st.tuples(st.integers(0, len(SYSTEM_PAGES) - 1), st.integers(1, 40)),
                    min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(requests, min_size=1, max_size=3), workflow=st.booleans())
def test_requests_over_offloaded_prefixes_always_finish(batches, workflow) -> None:
    stack = Stack(budget=8)
    try:
        systems = [prompt(50 + i, pages * PS) for i, pages in enumerate(SYSTEM_PAGES)]
        stack.run(*[state(s + prompt(60 + i, 1)) for i, s in enumerate(systems)])
        for b, batch in enumerate(batches):
            stack.offload_all()
            reqs = [state(systems[k] + prompt(100 * b + j, own), f"w{b}" if workflow else None,
                          f"a{k}" if workflow else None) for j, (k, own) in enumerate(batch)]
            assert all(len(r.all_ids) + 2 <= PAGES * PS for r in reqs)
            stack.run(*reqs)  # raises when the scheduler stops making progress
            stack.check()
            with stack.lock:
                assert stack.kv.in_use == 0 and stack.kv.num_waiting_for_loads == 0
    finally:
        stack.close()
