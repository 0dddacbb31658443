"""Per-layer load gates (``prefetch_wait_mode: layer``) and the copiers' unit plans, on the CPU.

``ThreadGate`` is the gate of the thread path and is driven here by real threads. ``EventGate``
(the GPU gate) is checked only as far as a machine without a GPU allows: its bookkeeping, and
that it refuses to be waited on before it is issued; its ``wait`` on CUDA events runs in
``benchmarks/prefetch_bandwidth.py`` on the device. The Triton gather kernel runs under Triton's
interpreter in a subprocess (``TRITON_INTERPRET=1`` must be set before the kernel is defined).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.prefetch.copier import CpuCopier, Unit
from context_forge.prefetch.factory import make_copier
from context_forge.prefetch.gate import EventGate, LoadFailed, ThreadGate, wait_all


def test_thread_gate_releases_each_layer_when_it_lands():
    gate = ThreadGate(3, timeout=5)
    assert gate.issued, "a CPU gate can be waited on from the start"
    passed: list[int] = []

    def waiter(layer: int) -> None:
        gate.wait(layer)
        passed.append(layer)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert passed == []
    gate.mark(0, 1)
    threads[0].join(5)
    time.sleep(0.05)
    assert passed == [0], "layers 1 and 2 have not landed"
    gate.mark(1, 2)
    for t in threads:
        t.join(5)
    assert sorted(passed) == [0, 1, 2]


def test_gate_marks_must_come_in_layer_order():
    gate = ThreadGate(4)
    with pytest.raises(ValueError, match="out of order"):
        gate.mark(1, 1)
    gate.mark(0, 2)
    with pytest.raises(ValueError, match="out of order"):
        gate.mark(0, 1)
    with pytest.raises(ValueError, match="out of order"):
        gate.mark(2, 3)
    with pytest.raises(ValueError, match="num_layers"):
        ThreadGate(0)


def test_a_failed_load_releases_waiters_with_an_error():
    gate = ThreadGate(2, timeout=5)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            gate.wait(1)
        except LoadFailed as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    gate.fail()
    t.join(5)
    assert len(errors) == 1 and not gate.issued


def test_issued_fires_the_hook_once_every_layer_is_marked():
    gate = EventGate(3)
    calls: list[int] = []
    gate.on_issued = lambda: calls.append(1)
    gate.mark(0, 2, handle="ev0")
    assert not gate.issued and calls == []
    with pytest.raises(RuntimeError, match="never issued"):
        gate.wait(2)
    gate.mark(2, 1, handle="ev1")
    assert gate.issued and calls == [1]
    gate.fail()
    with pytest.raises(LoadFailed):
        gate.wait(0)


def test_wait_all_waits_on_every_gate_for_the_layer():
    a, b = ThreadGate(2, timeout=5), ThreadGate(2, timeout=5)
    a.mark(0, 2)
    done = threading.Event()
    t = threading.Thread(target=lambda: (wait_all([a, b])(1), done.set()))
    t.start()
    time.sleep(0.05)
    assert not done.is_set(), "gate b has not landed layer 1"
    b.mark(0, 2)
    t.join(5)
    assert done.is_set()


def _buffers(layers: int = 3, dev_pages: int = 8, host_pages: int = 12):
    dev = DeviceKVBuffer(layers, dev_pages, 2, 1, 4, torch.float32)
    host = HostKVBuffer(layers, host_pages, 2, 1, 4, torch.float32, pin_memory=False)
    host.buffer.copy_(torch.randn_like(host.buffer))
    return dev, host


def test_cpu_copier_plans_layer_major_units_and_lands_bit_exact():
    dev, host = _buffers()
    copier = CpuCopier(dev, host, chunk_pages=2)
    assert copier.units(3) == [Unit(0, 2, 0, 1), Unit(2, 3, 0, 1), Unit(0, 2, 1, 1), Unit(2, 3, 1, 1),
                               Unit(0, 2, 2, 1), Unit(2, 3, 2, 1)]
    gate = ThreadGate(3)
    marks: list[int] = []
    original = gate.mark
    gate.mark = lambda first, count, handle=None: (marks.append(first), original(first, count, handle))
    copier.load([5, 0, 11], [7, 2, 3], gate=gate)
    assert marks == [0, 1, 2], "a layer is marked once all its pages landed"
    for h, d in ((5, 7), (0, 2), (11, 3)):
        assert torch.equal(dev.buffer[:, :, d], host.buffer[h])


def test_make_copier_on_the_cpu_and_unknown_backends():
    dev, host = _buffers()
    assert isinstance(make_copier(dev, host, io_backend="kernel"), CpuCopier)
    with pytest.raises(ValueError, match="hicache_io_backend 'dma'"):
        make_copier(dev, host, io_backend="dma")


def test_gather_kernel_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, __file__, "kernel"], env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "ok kernel" in done.stdout


def _kernel_case() -> None:
    """Layer ranges of scattered host pages into scattered device pages; untouched layers stay zero."""
    from context_forge.prefetch.uva_kernel import gather_layers

    gen = torch.Generator().manual_seed(0)
    for layers, page_size, heads, dim, programs in ((3, 4, 2, 8, 3), (2, 1, 1, 5, 1), (4, 2, 3, 16, 64)):
        host = torch.randn(9, layers, 2, page_size, heads, dim, generator=gen)
        dev = torch.zeros(layers, 2, 6, page_size, heads, dim)
        hp, dp = torch.tensor([4, 0, 8, 3]), torch.tensor([5, 1, 0, 2])
        gather_layers(host, dev, hp, dp, 1, layers - 1, programs)
        want = torch.zeros_like(dev)
        want[:, :, dp] = host[hp].permute(1, 2, 0, 3, 4, 5)
        want[0] = 0
        assert torch.equal(dev, want), (layers, page_size, heads, dim, programs)
    gather_layers(host, dev, hp[:0], dp[:0], 0, layers)  # an empty load launches nothing
    print("ok kernel")


if __name__ == "__main__":
    if sys.argv[1:] == ["kernel"]:
        _kernel_case()
