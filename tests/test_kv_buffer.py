"""Device/host KV buffers: layouts, slot writes, and bit-exact page copies both ways.

Runs on CPU tensors (no GPU here); the "device" buffer is a CPU tensor and the host buffer is not
pinned, which exercises the same indexing code as a GPU run.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.kv.buffer import (
    DeviceKVBuffer, HostKVBuffer, copy_device_to_host, copy_host_to_device)

SHAPE = dict(num_layers=3, page_size=4, num_kv_heads=2, head_dim=8)


def _filled_device(num_pages: int, dtype: torch.dtype, seed: int = 0) -> DeviceKVBuffer:
    dev = DeviceKVBuffer(num_pages=num_pages, dtype=dtype, device="cpu", **SHAPE)
    gen = torch.Generator().manual_seed(seed)
    dev.buffer.copy_(torch.randn(dev.buffer.shape, generator=gen).to(dtype))
    return dev


def test_layouts_and_sizes() -> None:
    dev = DeviceKVBuffer(num_pages=5, dtype=torch.bfloat16, **SHAPE)
    host = HostKVBuffer(num_pages=7, dtype=torch.bfloat16, **SHAPE)
    assert dev.buffer.shape == (3, 2, 5, 4, 2, 8) and dev.buffer.abs().sum() == 0
    assert host.buffer.shape == (7, 3, 2, 4, 2, 8) and host.page(2).is_contiguous()
    assert host.pinned == torch.cuda.is_available(), "pinned exactly when a GPU is present"
    assert dev.bytes_per_page == host.bytes_per_page == 3 * 2 * 4 * 2 * 8 * 2
    assert dev.nbytes == 5 * dev.bytes_per_page
    assert dev.k_pages(1).shape == (5, 4, 2, 8)


def test_write_places_tokens_at_flat_slots() -> None:
    dev = DeviceKVBuffer(num_pages=4, dtype=torch.float32, **SHAPE)
    k = torch.randn(3, 2, 8)
    v = torch.randn(3, 2, 8)
    dev.write(2, torch.tensor([13, 2, 7]), k, v)
    assert torch.equal(dev.k_pages(2)[3, 1], k[0]) and torch.equal(dev.v_pages(2)[0, 2], v[1])
    assert torch.equal(dev.k_pages(2)[1, 3], k[2])
    assert dev.k_pages(0).abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    dev = _filled_device(10, dtype)
    original = dev.buffer.clone()
    host = HostKVBuffer(num_pages=12, dtype=dtype, **SHAPE)
    copy_device_to_host(dev, host, [7, 2, 5], [4, 9, 0])
    copy_device_to_host(dev, host, [1, 3], [10, 11])
    assert torch.equal(host.page(4)[:, 0], original[:, 0, 7])
    assert torch.equal(host.page(9)[:, 1], original[:, 1, 2])
    dev.buffer.zero_()
    copy_host_to_device(host, dev, [0, 4, 9, 10, 11], [5, 7, 2, 1, 3])
    for page in (7, 2, 5, 1, 3):
        assert torch.equal(dev.buffer[:, :, page].view(torch.uint8),
                           original[:, :, page].view(torch.uint8))
    assert dev.buffer[:, :, [0, 4, 6, 8, 9]].abs().sum() == 0, "other pages untouched"


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_page_moves_round_trip(data: st.DataObject) -> None:
    dev_pages = data.draw(st.lists(st.integers(0, 7), min_size=0, max_size=8, unique=True))
    host_pages = data.draw(st.lists(st.integers(0, 9), min_size=len(dev_pages),
                                    max_size=len(dev_pages), unique=True))
    back_pages = data.draw(st.permutations(list(range(8))))[: len(dev_pages)]
    dev = _filled_device(8, torch.bfloat16, seed=len(dev_pages))
    original = dev.buffer.clone()
    host = HostKVBuffer(num_pages=10, dtype=torch.bfloat16, **SHAPE)
    copy_device_to_host(dev, host, dev_pages, torch.tensor(host_pages, dtype=torch.long))
    target = _filled_device(8, torch.bfloat16, seed=99)
    copy_host_to_device(host, target, host_pages, back_pages)
    for src, dst in zip(dev_pages, back_pages):
        assert torch.equal(target.buffer[:, :, dst], original[:, :, src])


def test_copy_errors_name_the_problem() -> None:
    dev = _filled_device(4, torch.float32)
    host = HostKVBuffer(num_pages=4, dtype=torch.float32, **SHAPE)
    with pytest.raises(ValueError, match="2 device pages but 1 host pages"):
        copy_device_to_host(dev, host, [0, 1], [0])
    with pytest.raises(ValueError, match="host_pages has page id 4"):
        copy_device_to_host(dev, host, [0], [4])
    with pytest.raises(ValueError, match="dev_pages has page id -1"):
        copy_host_to_device(host, dev, [0], [-1])
    with pytest.raises(ValueError, match="duplicate"):
        copy_device_to_host(dev, host, [0, 1], [2, 2])
    with pytest.raises(TypeError, match="source first"):
        copy_host_to_device(dev, host, [0], [0])  # type: ignore[arg-type]
    other = HostKVBuffer(num_pages=4, dtype=torch.bfloat16, **SHAPE)
    with pytest.raises(ValueError, match="dtype"):
        copy_device_to_host(dev, other, [0], [0])
    with pytest.raises(ValueError, match="page_size"):
        DeviceKVBuffer(num_layers=1, num_pages=1, page_size=0, num_kv_heads=1, head_dim=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=20, unique=True))
def test_runs_cover_pages_in_order(pages: list[int]) -> None:
    """The GPU path copies one host block per run; the runs must rebuild the page list exactly."""
    from context_forge.kv.buffer import page_runs

    runs = page_runs(pages)
    rebuilt = [first + i for _, first, count in runs for i in range(count)]
    assert rebuilt == pages
    assert [offset for offset, _, _ in runs] == [sum(c for _, _, c in runs[:k]) for k in range(len(runs))]
    assert all(runs[k][1] + runs[k][2] != runs[k + 1][1] for k in range(len(runs) - 1)), "maximal"
