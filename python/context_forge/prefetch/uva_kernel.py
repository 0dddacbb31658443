"""A Triton kernel that gathers KV pages straight from pinned host memory into the device pages.

Pinned (page-locked) host memory is mapped into the GPU's address space (unified virtual
addressing on CUDA; ``hipHostMalloc`` memory on ROCm), so a kernel can load from it over PCIe
with no copy engine and no staging buffer. One launch moves a range of layers of a load: for
every layer ``l`` in the range and every page ``i`` it reads the contiguous K+V block
``host[host_pages[i], l]`` (page-major host layout) and writes K to ``dev[l, 0, device_pages[i]]``
and V to ``dev[l, 1, device_pages[i]]`` (layer-major device layout). That is what lets a load
land layer by layer: each launch can be followed by an event that says "these layers are
complete for every page of the load".

The grid is a fixed number of persistent programs (``programs``) looping over
``(layer, page, block)`` items, so a load occupies a bounded share of the GPU's SMs while decode
runs beside it; PCIe latency, not SM count, bounds a zero-copy read, and a few dozen programs
with 8 KiB each in flight cover it.

On the CPU the kernel runs only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
this module is imported), which the CPU tests use to check its index arithmetic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DEFAULT_PROGRAMS = 32
"""Persistent programs per launch (measured on the H100: see docs/prefetch.md)."""


@triton.jit
def _gather_pages_kernel(Host, Dev, HostPages, DevPages, first_layer, num_layers, num_pages,
                         host_page_stride, host_layer_stride, dev_layer_stride, dev_kv_stride,
                         dev_page_stride, HALF: tl.constexpr, BLOCK: tl.constexpr,
                         BLOCKS_PER_PAGE: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    per_layer = num_pages * BLOCKS_PER_PAGE
    total = num_layers * per_layer
    lane = tl.arange(0, BLOCK)
    for item in range(pid, total, nprog):
        layer = (first_layer + item // per_layer).to(tl.int64)
        rest = item % per_layer
        i = rest // BLOCKS_PER_PAGE
        offs = (rest % BLOCKS_PER_PAGE) * BLOCK + lane
        mask = offs < 2 * HALF
        hp = tl.load(HostPages + i).to(tl.int64)
        dp = tl.load(DevPages + i).to(tl.int64)
        x = tl.load(Host + hp * host_page_stride + layer * host_layer_stride + offs, mask=mask)
        is_v = (offs >= HALF).to(tl.int64)
        dst = Dev + layer * dev_layer_stride + is_v * dev_kv_stride + dp * dev_page_stride + (offs - is_v * HALF)
        tl.store(dst, x, mask=mask)


def _block(half: int) -> int:
    return min(4096, triton.next_power_of_2(2 * half))


def gather_layers(host: torch.Tensor, dev: torch.Tensor, host_pages: torch.Tensor,
                  dev_pages: torch.Tensor, first_layer: int, num_layers: int,
                  programs: int = DEFAULT_PROGRAMS) -> None:
    """Copy layers ``[first_layer, first_layer + num_layers)`` of ``host_pages[i]`` into
    ``dev_pages[i]`` on the current stream.

    ``host``: pinned ``[pages, layers, 2, page_size, heads, dim]`` (contiguous); ``dev``:
    ``[layers, 2, pages, page_size, heads, dim]`` (contiguous) on the GPU; the page id tensors
    are int64 on ``dev``'s device, of equal length."""
    n = int(host_pages.numel())
    if n == 0 or num_layers <= 0:
        return
    half = host[0, 0, 0].numel()
    block = _block(half)
    blocks_per_page = triton.cdiv(2 * half, block)
    total = num_layers * n * blocks_per_page
    grid = (max(1, min(programs, total)),)
    _gather_pages_kernel[grid](
        host, dev, host_pages, dev_pages, first_layer, num_layers, n,
        host.stride(0), host.stride(1), dev.stride(0), dev.stride(1), dev.stride(2),
        HALF=half, BLOCK=block, BLOCKS_PER_PAGE=blocks_per_page, num_warps=4)
