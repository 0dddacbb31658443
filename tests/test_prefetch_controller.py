"""The prefetch controller with its real worker thread, real radix cache and real KV buffers.

There is no GPU here, so the controller runs its thread path: ``CpuCopier`` copies each unit (one
layer of a chunk of pages) on the worker thread itself. Every page's KV is a pattern derived from the page's tokens, so any
load can be checked bit for bit. ``SteppedCopier`` is that same copier with a gate the test
opens unit by unit, to place an on-demand load in the middle of a running prefetch.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from context_forge.cache import PagePool, RadixCache, get_policy
from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.kv.buffer_transfer import BufferTransfer
from context_forge.prefetch import (
    ControllerConfig,
    CpuCopier,
    ObservedPagePool,
    PrefetchController,
    PrefetchTarget,
    TaskKind,
    TaskState,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

PS, LAYERS, HEADS, DIM = 2, 2, 1, 4


def pattern(page_tokens: list[int]) -> torch.Tensor:
    """The KV a page of these tokens holds: ``[layers, 2, page_size, heads, dim]``, exact in fp32."""
    base = float(sum((t + 1) * (i + 7) for i, t in enumerate(page_tokens)) % 100_000)
    grid = torch.arange(LAYERS * 2 * PS * HEADS * DIM, dtype=torch.float32).view(LAYERS, 2, PS, HEADS, DIM)
    return grid + base * 1000


class SteppedCopier(CpuCopier):
    """The real CPU copier; each unit waits for a permit and is logged (layer, device pages) once copied."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.permits = threading.Semaphore(0)
        self.copied = threading.Semaphore(0)
        self.log: list[tuple[int, ...]] = []

    def _issue(self, state, unit, host_pages, device_pages) -> None:
        self.permits.acquire()
        super()._issue(state, unit, host_pages, device_pages)
        self.log.append((unit.first_layer, tuple(device_pages)))
        self.copied.release()


class Rig:
    """A two-tier cache over real KV buffers plus a controller (started unless ``start=False``)."""

    def __init__(self, dev_pages: int = 32, host_pages: int = 96, chunk_pages: int = 2,
                 copier=CpuCopier, start: bool = True, layer_gates: bool = False) -> None:
        self.lock = threading.RLock()
        self.dev = DeviceKVBuffer(LAYERS, dev_pages, PS, HEADS, DIM, torch.float32)
        self.host = HostKVBuffer(LAYERS, host_pages, PS, HEADS, DIM, torch.float32, pin_memory=False)
        self.pool = ObservedPagePool(dev_pages, "device")
        self.cache = RadixCache(PS, self.pool, PagePool(host_pages, "host"), get_policy("lru"),
                                BufferTransfer(self.dev, self.host), "write_back")
        self.copier = copier(self.dev, self.host, chunk_pages)
        self.ctl = PrefetchController(self.cache, self.copier, self.lock,
                                      ControllerConfig(history=1000, layer_gates=layer_gates))
        self.pool.add_free_listener(self.ctl.ledger.freed)
        if start:
            self.ctl.start()

    def add(self, tokens: list[int], agent: str | None = None):
        """Cache ``tokens`` as a finished request would (its pages hold the pattern KV)."""
        with self.lock:
            n = len(tokens) // PS
            pages = self.cache.alloc_device(n)
            if pages is None:
                return None
            for i, p in enumerate(pages):
                self.dev.buffer[:, :, p] = pattern(tokens[i * PS:(i + 1) * PS])
            res = self.cache.insert(tokens, pages, agent)
            self.pool.free(res.redundant(pages))
            return res.node

    def offload_all(self) -> None:
        with self.lock:
            self.cache.evict_device(self.pool.num_used)

    def target(self, node, steps: float = 0, prob: float = 1.0, wf: str = "wf", agent: str = "a") -> PrefetchTarget:
        return PrefetchTarget(wf, agent, node, steps, prob)

    def check(self, final: bool = False) -> None:
        """Page accounting, and every landed device page holds its tokens' KV bit for bit."""
        with self.lock:
            self.cache.check(external_device_pages=0)
            for node in self.cache.nodes():
                if node.device_pages is None:
                    continue
                assert not (final and node.is_loading), f"{node!r} still loading"
                if node.is_loading:
                    continue
                for i, p in enumerate(node.device_pages):
                    want = pattern(node.key[i * PS:(i + 1) * PS])
                    assert torch.equal(self.dev.buffer[:, :, p], want), f"page {p} of {node!r} holds wrong KV"

    def close(self) -> None:
        self.ctl.stop()


def tokens(seed: int, pages: int) -> list[int]:
    return [seed * 1000 + i for i in range(pages * PS)]


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def done_order(ctl: PrefetchController) -> list:
    return [t for t in ctl.history if t.state is TaskState.DONE]


# ---------------------------------------------------------------- loading
def test_prefetch_lands_bit_identical_kv_and_counts(rig):
    node = rig.add(tokens(1, 5))
    rig.offload_all()
    assert node.device_pages is None
    with rig.lock:
        rig.ctl.update("wf", [rig.target(node)])
    assert rig.ctl.wait_idle()
    assert node.device_pages is not None and not node.is_loading
    rig.check(final=True)
    s = rig.ctl.stats
    assert (s.issued, s.completed, s.pages, s.bytes) == (1, 1, 5, 5 * rig.dev.bytes_per_page)
    assert rig.ctl.ledger.unclaimed_pages == 5


def test_queue_serves_demands_first_then_sooner_then_likelier():
    r = Rig(start=False)
    try:
        nodes = [r.add(tokens(i, 2)) for i in range(5)]
        r.offload_all()
        with r.lock:
            r.ctl.update("wf", [r.target(nodes[0], steps=2), r.target(nodes[1], steps=0, prob=0.5),
                                r.target(nodes[2], steps=1), r.target(nodes[3], steps=0)])
            demand = r.ctl.demand(nodes[4])
        assert demand is not None and demand.plan is not None and nodes[4].is_loading
        r.ctl.start()
        assert r.ctl.wait_idle()
        order = [t.node for t in done_order(r.ctl)]
        assert order == [nodes[4], nodes[3], nodes[1], nodes[2], nodes[0]]
        assert r.ctl.stats.demand_loads == 1 and r.ctl.stats.issued == 4
        r.check(final=True)
    finally:
        r.close()


def test_stale_prefetches_are_cancelled_when_the_workflow_moves_on():
    r = Rig(start=False)
    try:
        a, b, c = (r.add(tokens(i, 2)) for i in range(3))
        r.offload_all()
        with r.lock:
            first = r.ctl.update("wf", [r.target(a), r.target(b, steps=1)])
            second = r.ctl.update("wf", [r.target(b, steps=0), r.target(c, steps=1)])
        task_a = next(t for t in first if t.node is a)
        assert task_a.state is TaskState.CANCELLED and task_a.reason == "no longer due"
        assert any(t is first[1] for t in second), "a target still due keeps its task"
        assert first[1].steps == 0
        r.ctl.start()
        assert r.ctl.wait_idle()
        assert a.device_pages is None and b.device_pages is not None and c.device_pages is not None
        with r.lock:
            r.ctl.drop("wf")
        assert r.ctl.stats.cancelled == 1 and r.ctl.stats.completed == 2
        r.check(final=True)
    finally:
        r.close()


def test_demand_interrupts_a_running_prefetch_between_layers():
    r = Rig(chunk_pages=1, copier=SteppedCopier)
    try:
        big, small = r.add(tokens(1, 6)), r.add(tokens(2, 2))
        r.offload_all()
        with r.lock:
            (pre,) = r.ctl.update("wf", [r.target(big)])
        r.copier.permits.release()
        assert r.copier.copied.acquire(timeout=5), "first prefetch chunk never copied"
        with r.lock:
            demand = r.ctl.demand(small)
        assert demand is not None
        r.copier.permits.release(100)
        assert r.ctl.wait_idle()
        pre_units = [(layer, (p,)) for layer in range(LAYERS) for p in pre.plan.device_pages]
        dem_units = [(layer, (p,)) for layer in range(LAYERS) for p in demand.plan.device_pages]
        # unit 1 of the prefetch had passed its interrupt point; the demand runs at the next one
        assert r.copier.log == pre_units[:2] + dem_units + pre_units[2:]
        assert [t.node for t in done_order(r.ctl)] == [small, big]
        assert r.ctl.stats.interrupts == 1
        r.check(final=True)
    finally:
        r.copier.permits.release(100)
        r.close()


def test_gated_loads_land_layer_by_layer_for_a_waiting_reader():
    r = Rig(chunk_pages=2, copier=SteppedCopier, layer_gates=True)
    try:
        node = r.add(tokens(1, 3))
        r.offload_all()
        with r.lock:
            task = r.ctl.demand(node)
        gate = task.plan.ticket.gate
        assert gate is not None and gate.issued
        seen: list[int] = []

        def reader() -> None:  # what the model does: wait for a layer, then read it
            for layer in range(LAYERS):
                gate.wait(layer)
                for i, p in enumerate(node.device_pages):
                    assert torch.equal(r.dev.buffer[layer, :, p], pattern(node.key[i * PS:(i + 1) * PS])[layer])
                seen.append(layer)

        t = threading.Thread(target=reader)
        t.start()
        r.copier.permits.release(2)            # layer 0 (two units of <= 2 pages)
        for _ in range(2):
            assert r.copier.copied.acquire(timeout=5)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [0] and node.is_loading, "layer 0 is readable while layer 1 is still on the host"
        r.copier.permits.release(100)
        t.join(5)
        assert seen == [0, 1]
        assert r.ctl.wait_idle() and not node.is_loading
        r.check(final=True)
    finally:
        r.copier.permits.release(100)
        r.close()


def test_the_issued_hook_runs_for_every_gated_load(rig):
    gated = Rig(layer_gates=True)
    try:
        calls: list[int] = []
        gated.ctl.on_issued = lambda: calls.append(1)
        a, b = gated.add(tokens(1, 2)), gated.add(tokens(2, 3))
        gated.offload_all()
        with gated.lock:
            gated.ctl.update("wf", [gated.target(a), gated.target(b, steps=1)])
        assert gated.ctl.wait_idle()
        assert len(calls) == 2 and gated.ctl.stats.completed == 2
        gated.check(final=True)
    finally:
        gated.close()
    node = rig.add(tokens(3, 2))
    rig.offload_all()
    with rig.lock:
        task = rig.ctl.demand(node)
    assert task.plan.ticket.gate is None, "no gates unless layer_gates is on"
    assert rig.ctl.wait_idle()


# ---------------------------------------------------------------- budget and pressure
def test_prefetch_evicts_only_less_valuable_nodes():
    r = Rig(dev_pages=8)
    try:
        old = r.add(tokens(1, 4))          # least recently used
        target = r.add(tokens(2, 4))
        with r.lock:
            r.cache.lock(old)
            r.cache.evict_device(4)         # the target goes to host, ``old`` stays on device
            r.cache.unlock(old)
        recent = r.add(tokens(3, 4))        # device full: old (less valuable) + recent (more)
        assert target.device_pages is None and r.pool.num_free == 0
        with r.lock:
            r.ctl.update("wf", [r.target(target)])
        assert r.ctl.wait_idle()
        assert target.device_pages is not None and recent.device_pages is not None
        assert old.device_pages is None and old.host_pages is not None
        with r.lock:
            r.cache.evict_device(4)         # target (older than recent) goes back to host
        assert target.device_pages is None and recent.device_pages is not None
        with r.lock:
            r.ctl.update("wf", [r.target(target, steps=1)])
        assert r.ctl.wait_idle()
        assert target.device_pages is not None and recent.device_pages is not None  # free pages suffice
        r.check(final=True)
    finally:
        r.close()


def test_prefetch_skips_when_only_more_valuable_nodes_could_make_room():
    r = Rig(dev_pages=8)
    try:
        target = r.add(tokens(1, 4))
        r.offload_all()
        newer = r.add(tokens(2, 8))
        with r.lock:
            (task,) = r.ctl.update("wf", [r.target(target)])
        assert r.ctl.wait_idle()
        assert task.state is TaskState.SKIPPED and task.reason == "no room"
        assert target.device_pages is None and newer.device_pages is not None
        assert r.ctl.stats.skipped == 1 and r.ctl.stats.issued == 0
        r.check(final=True)
    finally:
        r.close()


def test_pressure_caps_look_ahead_and_keeps_free_pages():
    r = Rig(dev_pages=8, start=False)
    try:
        a, b = r.add(tokens(1, 2)), r.add(tokens(2, 4))
        r.offload_all()
        with r.lock:
            tasks = r.ctl.update("wf", [r.target(a, steps=0), r.target(b, steps=2)])
            r.ctl.set_limits(max_steps=1, reserve_pages=5)
        assert tasks[1].state is TaskState.CANCELLED and tasks[1].reason == "pressure"
        r.ctl.start()
        assert r.ctl.wait_idle()
        assert a.device_pages is not None  # 2 pages leave 6 >= 5 free
        with r.lock:
            (again,) = r.ctl.update("wf", [r.target(b, steps=0)])
        assert r.ctl.wait_idle()
        assert again.state is TaskState.SKIPPED and b.device_pages is None  # 4 more would leave 2 < 5
        with r.lock:
            r.ctl.set_limits(max_steps=-1)
            assert r.ctl.update("wf", [r.target(b, steps=0)]) == []
        r.check(final=True)
    finally:
        r.close()


# ---------------------------------------------------------------- accounting and failures
def test_hits_and_waste_are_counted(rig):
    a, b = rig.add(tokens(1, 3)), rig.add(tokens(2, 3))
    rig.offload_all()
    with rig.lock:
        rig.ctl.update("wf", [rig.target(a), rig.target(b, steps=1)])
    assert rig.ctl.wait_idle()
    with rig.lock:
        m = rig.cache.match(tokens(1, 2))           # a request uses the first 2 pages of a
        assert rig.ctl.ledger.claim(m.device_pages) == 2
        rig.cache.lock(m.last_node)
        rig.cache.evict_device(rig.pool.num_used)   # b (and a's unused tail) are evicted
        rig.cache.unlock(m.last_node)
    s = rig.ctl.stats
    assert (s.hits, s.wasted) == (1, 1)
    assert rig.ctl.ledger.unclaimed_pages == 0
    rig.check(final=True)


class BrokenCopier(CpuCopier):
    """Fails on its second unit, as a device error would (the failure path, not a stand-in)."""

    def _issue(self, state, unit, host_pages, device_pages) -> None:
        if unit.start or unit.first_layer:
            raise RuntimeError("copy engine fault")
        super()._issue(state, unit, host_pages, device_pages)


def test_a_failed_copy_is_reported_and_never_served():
    r = Rig(copier=BrokenCopier, start=False)
    try:
        a, b = r.add(tokens(1, 4)), r.add(tokens(2, 2))
        r.offload_all()
        with r.lock:
            first, second = r.ctl.update("wf", [r.target(a), r.target(b, steps=1)])
        r.ctl.start()
        assert not r.ctl.wait_idle(timeout=5)
        assert isinstance(r.ctl.error, RuntimeError)
        assert first.state is TaskState.FAILED and "copy engine fault" in first.reason
        assert second.state is TaskState.CANCELLED
        assert a.is_loading, "half-copied KV must never be marked ready"
        with r.lock:
            r.cache.check(external_device_pages=0)
    finally:
        r.close()


def test_stop_finishes_demands_and_cancels_queued_prefetches():
    r = Rig(start=False)
    nodes = [r.add(tokens(i, 2)) for i in range(4)]
    r.offload_all()
    with r.lock:
        tasks = r.ctl.update("wf", [r.target(n, steps=i) for i, n in enumerate(nodes[:3])])
        demand = r.ctl.demand(nodes[3])
    r.ctl.stop()
    r.ctl.start()
    r.ctl.stop()
    assert demand.state is TaskState.DONE and demand.kind is TaskKind.DEMAND
    assert all(t.state is TaskState.CANCELLED for t in tasks)
    r.check(final=True)


def test_bad_configuration_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="history"):
        ControllerConfig(history=-1)
    dev = DeviceKVBuffer(LAYERS, 4, PS, HEADS, DIM, torch.float32)
    host = HostKVBuffer(LAYERS, 8, PS, HEADS, DIM, torch.float32, pin_memory=False)
    with pytest.raises(ValueError, match="chunk_pages"):
        CpuCopier(dev, host, 0)
    with pytest.raises(ValueError, match="host pool"):
        PrefetchController(RadixCache(PS, PagePool(4)), CpuCopier(dev, host, 1), threading.RLock())
    with pytest.raises(ValueError, match="device pool 5"):
        PrefetchController(RadixCache(PS, PagePool(5), PagePool(8)), CpuCopier(dev, host, 1), threading.RLock())
    with pytest.raises(ValueError, match="2 host pages but 1 device"):
        CpuCopier(dev, host, 1).load([0, 1], [0])
    with pytest.raises(ValueError, match="host page id 9"):
        CpuCopier(dev, host, 1).load([9], [0])


# ---------------------------------------------------------------- random schedules
class PrefetchMachine(RuleBasedStateMachine):
    """Random inserts, offloads, prefetch plans, demands, requests and pressure changes while the
    worker thread copies concurrently: no page leaks, no wrong KV ever visible to a request."""

    @initialize(dev=st.integers(6, 24), host=st.integers(24, 48), chunk=st.integers(1, 3), gates=st.booleans())
    def setup(self, dev, host, chunk, gates):
        self.rig = Rig(dev_pages=dev, host_pages=host, chunk_pages=chunk, layer_gates=gates)
        self.prompts: list[list[int]] = []

    def teardown(self):
        rig = getattr(self, "rig", None)
        if rig is None:
            return
        assert rig.ctl.wait_idle(), "controller did not go idle"
        rig.close()
        rig.check(final=True)
        assert rig.ctl.error is None

    @rule(seed=st.integers(0, 5), pages=st.integers(1, 4), agent=st.sampled_from(["a", "b", "c"]))
    def add(self, seed, pages, agent):
        toks = tokens(seed, pages)
        if self.rig.add(toks, agent) is not None:
            self.prompts.append(toks)

    @rule(n=st.integers(1, 24))
    def evict(self, n):
        with self.rig.lock:
            self.rig.cache.evict_device(n)

    @rule()
    def offload(self):
        self.rig.offload_all()

    @precondition(lambda self: self.prompts)
    @rule(wf=st.sampled_from(["w1", "w2"]), picks=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 3)),
                                                          min_size=1, max_size=4))
    def plan(self, wf, picks):
        with self.rig.lock:
            targets = []
            for idx, steps in picks:
                m = self.rig.cache.match(self.prompts[idx % len(self.prompts)], touch=False)
                if m.nodes:
                    targets.append(self.rig.target(m.last_node, steps=steps, wf=wf))
            self.rig.ctl.update(wf, targets)

    @precondition(lambda self: self.prompts)
    @rule(idx=st.integers(0, 99))
    def request(self, idx):
        """Admit-like: wait if loading (with gates: read layer by layer as they land), demand host
        parts, else read the KV a request would use."""
        toks = self.prompts[idx % len(self.prompts)]
        rig = self.rig
        with rig.lock:
            m = rig.cache.match(toks)
            loading = [n for n in m.nodes if n.is_loading]
            if loading and not all(n.loading.gate is not None for n in loading):
                return  # request waiting: come back later
            gates = {id(n.loading.gate): n.loading.gate for n in loading}
            if loading:  # layer waiting: read each layer once its gate says it landed
                rig.cache.lock(m.last_node)
        if loading:
            try:
                for layer in range(LAYERS):
                    for gate in gates.values():
                        gate.wait(layer)
                    for i, p in enumerate(m.device_pages):
                        want = pattern(toks[i * PS:(i + 1) * PS])[layer]
                        assert torch.equal(rig.dev.buffer[layer, :, p], want), f"layer {layer} of page {p}"
            finally:
                with rig.lock:
                    rig.cache.unlock(m.last_node)
            return
        with rig.lock:
            if m.host_len:
                rig.ctl.demand(m.last_node)
                return
            rig.ctl.ledger.claim(m.device_pages)
            for i, p in enumerate(m.device_pages):
                assert torch.equal(rig.dev.buffer[:, :, p], pattern(toks[i * PS:(i + 1) * PS]))

    @rule(wf=st.sampled_from(["w1", "w2"]))
    def drop(self, wf):
        with self.rig.lock:
            self.rig.ctl.drop(wf)

    @rule(max_steps=st.sampled_from([-1, 0, 1, 3]), reserve=st.integers(0, 4))
    def pressure(self, max_steps, reserve):
        with self.rig.lock:
            self.rig.ctl.set_limits(max_steps, reserve)

    @rule()
    def relax(self):
        with self.rig.lock:
            self.rig.ctl.set_limits(float("inf"), 0)

    @invariant()
    def consistent(self):
        if hasattr(self, "rig"):
            self.rig.check()


PrefetchMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPrefetchSchedules = PrefetchMachine.TestCase
