"""Property tests: random insert / match / lock / unlock / evict / load_back sequences keep the
two-tier cache consistent: no leaked or doubly owned page, free + cached + in-use == total,
and a locked node is never evicted."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from context_forge.cache import CountingTransfer, PagePool, RadixCache, get_policy

BLOCKS = [[b * 10 + i for i in range(5)] for b in range(6)]
AGENTS = ["planner", "coder", "tester", "reviewer"]


class CacheMachine(RuleBasedStateMachine):
    @initialize(
        page_size=st.sampled_from([1, 2, 4]),
        dev=st.integers(4, 24),
        host=st.integers(0, 32),
        write_policy=st.sampled_from(["write_back", "write_through", "write_through_selective"]),
    )
    def setup(self, page_size, dev, host, write_policy):
        self.cache = RadixCache(
            page_size, PagePool(dev, "device"), PagePool(host, "host") if host else None,
            get_policy("lru"), CountingTransfer(), write_policy, write_through_threshold=2)
        self.active: list[dict] = []

    def _tokens(self, blocks):
        return [t for b in blocks for t in BLOCKS[b]]

    @rule(blocks=st.lists(st.integers(0, 5), min_size=1, max_size=4), agent=st.sampled_from(AGENTS))
    def start_request(self, blocks, agent):
        c = self.cache
        tokens = self._tokens(blocks)
        m = c.match(tokens, agent_id=agent)
        c.lock(m.last_node)
        if m.host_len:
            c.load_back(m.last_node)
            m = c.match(tokens, touch=False)
        n_rest = len(tokens) // c.page_size - m.device_len // c.page_size
        own = c.alloc_device(n_rest)
        if own is None:
            c.unlock(m.last_node)
            return
        self.active.append(dict(tokens=tokens, agent=agent, node=m.last_node,
                                prefix=list(m.device_pages), own=own,
                                path=list(m.nodes)))

    @precondition(lambda self: self.active)
    @rule(idx=st.integers(0, 100))
    def finish_request(self, idx):
        c = self.cache
        req = self.active.pop(idx % len(self.active))
        pages = req["prefix"] + req["own"]
        res = c.insert(req["tokens"], pages, req["agent"])
        c.device_pool.free(res.redundant(pages))
        c.unlock(req["node"])

    @precondition(lambda self: self.active)
    @rule(idx=st.integers(0, 100))
    def abort_request(self, idx):
        req = self.active.pop(idx % len(self.active))
        self.cache.device_pool.free(req["own"])
        self.cache.unlock(req["node"])

    @rule(n=st.integers(1, 12))
    def evict_device(self, n):
        self.cache.evict_device(n)

    @rule(n=st.integers(1, 12))
    def evict_host(self, n):
        self.cache.evict_host(n)

    @rule(blocks=st.lists(st.integers(0, 5), min_size=1, max_size=4))
    def load_back(self, blocks):
        c = self.cache
        m = c.match(self._tokens(blocks), touch=False)
        c.load_back(m.last_node)

    @invariant()
    def pages_are_accounted(self):
        if not hasattr(self, "cache"):
            return
        in_use = sum(len(r["own"]) for r in self.active)
        self.cache.check(external_device_pages=in_use)

    @invariant()
    def locked_paths_survive(self):
        for req in getattr(self, "active", []):
            node = req["node"]
            pages = []
            n = node
            while n.parent is not None:
                assert n.lock_ref > 0, "locked node lost its lock"
                assert n.parent.children.get(tuple(n.key[:self.cache.page_size])) is n, "locked node evicted"
                pages = (n.device_pages or []) + pages
                n = n.parent
            assert pages[:len(req["prefix"])] == req["prefix"], "locked prefix pages changed"


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
