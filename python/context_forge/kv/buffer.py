"""Paged KV tensors on the device and in host memory, and bit-exact page copies between them.

Device layout ``[num_layers, 2 (K, V), num_pages, page_size, num_kv_heads, head_dim]``: one layer's K
(or V) pages form one contiguous block that attention indexes by flat slot. Host layout
``[num_pages, num_layers, 2, page_size, num_kv_heads, head_dim]``: one page of every layer is one
contiguous block, so offloading or loading a page moves one run of memory on the host side.
A copy gathers or scatters all requested pages of all layers on the device in one operation; the
host side moves one copy per run of consecutive host page ids (all layers at once), straight from or
to the pinned buffer, so there is no host-side gather. With a CPU "device" both sides are one
``index_select``/``index_copy_``.
"""
from __future__ import annotations

from typing import Sequence

import torch

PageIds = Sequence[int] | torch.Tensor


class _KVShape:
    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype) -> None:
        for name, value in (("num_layers", num_layers), ("num_pages", num_pages),
                            ("page_size", page_size), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {value!r}")
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{type(self).__name__}: dtype must be a torch.dtype, got {dtype!r}")
        self.num_layers = num_layers
        self.num_pages = num_pages
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype

    @property
    def bytes_per_page(self) -> int:
        """K and V of one page across all layers."""
        return (self.num_layers * 2 * self.page_size * self.num_kv_heads * self.head_dim
                * self.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        return self.bytes_per_page * self.num_pages


class DeviceKVBuffer(_KVShape):
    """The KV cache that attention reads and writes. Zero-filled, so pages that were never written
    hold finite values (padding in batched attention gathers them before masking)."""

    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(num_layers, num_pages, page_size, num_kv_heads, head_dim, dtype)
        self.device = torch.device(device)
        self.buffer = torch.zeros(num_layers, 2, num_pages, page_size, num_kv_heads, head_dim,
                                  dtype=dtype, device=self.device)

    def k_pages(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s keys, ``[num_pages, page_size, num_kv_heads, head_dim]`` (a view)."""
        return self.buffer[layer, 0]

    def v_pages(self, layer: int) -> torch.Tensor:
        return self.buffer[layer, 1]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v`` ``[T, num_kv_heads, head_dim]`` at flat slots ``page * page_size + offset``."""
        flat = (-1, self.num_kv_heads, self.head_dim)
        self.buffer[layer, 0].view(flat).index_copy_(0, slots, k.to(self.dtype))
        self.buffer[layer, 1].view(flat).index_copy_(0, slots, v.to(self.dtype))


class HostKVBuffer(_KVShape):
    """Host-memory KV pages; pinned (page-locked) when a GPU is present so copies can be async."""

    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 pin_memory: bool | None = None) -> None:
        super().__init__(num_layers, num_pages, page_size, num_kv_heads, head_dim, dtype)
        self.pinned = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.buffer = torch.empty(num_pages, num_layers, 2, page_size, num_kv_heads, head_dim,
                                  dtype=dtype, pin_memory=self.pinned)

    def page(self, page_id: int) -> torch.Tensor:
        """One page of every layer, ``[num_layers, 2, page_size, num_kv_heads, head_dim]`` (a view)."""
        return self.buffer[page_id]


def copy_device_to_host(dev: DeviceKVBuffer, host: HostKVBuffer, dev_pages: PageIds,
                        host_pages: PageIds, non_blocking: bool = False) -> None:
    """Copy device pages ``dev_pages[i]`` into host pages ``host_pages[i]`` (all layers, K and V).

    With ``non_blocking`` and a pinned host buffer the copy may still be in flight on return:
    synchronise the current stream (or an event recorded on it) before reading the host pages."""
    dev_idx, host_idx, host_list = _check(dev, host, dev_pages, host_pages, dest_is_host=True)
    if dev_idx is None:
        return
    gathered = dev.buffer.index_select(2, dev_idx).permute(2, 0, 1, 3, 4, 5)
    if dev.device.type == "cpu":
        host.buffer.index_copy_(0, host_idx, gathered)
        return
    staged = gathered.contiguous()
    for offset, first, count in page_runs(host_list):
        host.buffer[first: first + count].copy_(staged[offset: offset + count],
                                                non_blocking=non_blocking)


def copy_host_to_device(host: HostKVBuffer, dev: DeviceKVBuffer, host_pages: PageIds,
                        dev_pages: PageIds, non_blocking: bool = False) -> None:
    """Copy host pages ``host_pages[i]`` into device pages ``dev_pages[i]`` (all layers, K and V).

    Source buffer and pages first, like ``KVTransfer.host_to_device(host_pages, device_pages)``.
    With ``non_blocking`` (pinned host buffer) the copy is queued on the current stream: later work
    on that stream sees the pages; other streams must wait on an event recorded after this call."""
    dev_idx, host_idx, host_list = _check(dev, host, dev_pages, host_pages, dest_is_host=False)
    if dev_idx is None:
        return
    if dev.device.type == "cpu":
        staged = host.buffer.index_select(0, host_idx)
    else:
        staged = torch.empty((len(host_list), *host.buffer.shape[1:]), dtype=dev.dtype,
                             device=dev.device)
        for offset, first, count in page_runs(host_list):
            staged[offset: offset + count].copy_(host.buffer[first: first + count],
                                                 non_blocking=non_blocking)
    dev.buffer.index_copy_(2, dev_idx, staged.permute(1, 2, 0, 3, 4, 5))


def page_runs(pages: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive page ids as ``(offset in pages, first page, count)``: each run is
    one contiguous block of the page-major host buffer, moved by one copy."""
    runs: list[tuple[int, int, int]] = []
    offset = 0
    for i in range(1, len(pages) + 1):
        if i == len(pages) or pages[i] != pages[i - 1] + 1:
            runs.append((offset, pages[offset], i - offset))
            offset = i
    return runs


def _check(dev: DeviceKVBuffer, host: HostKVBuffer, dev_pages: PageIds, host_pages: PageIds,
           dest_is_host: bool) -> tuple[torch.Tensor | None, torch.Tensor, list[int]]:
    """Validate a copy; returns device indices (on the device; ``None`` when there is nothing to copy),
    host indices (a CPU tensor) and host pages (a list)."""
    if not isinstance(dev, DeviceKVBuffer) or not isinstance(host, HostKVBuffer):
        raise TypeError(f"expected a DeviceKVBuffer and a HostKVBuffer (source first), got "
                        f"{type(dev).__name__} and {type(host).__name__}")
    for attr in ("num_layers", "page_size", "num_kv_heads", "head_dim", "dtype"):
        if getattr(dev, attr) != getattr(host, attr):
            raise ValueError(f"KV copy: device and host buffers differ in {attr} "
                             f"({getattr(dev, attr)} vs {getattr(host, attr)})")
    d = _as_list(dev_pages, "dev_pages")
    h = _as_list(host_pages, "host_pages")
    if len(d) != len(h):
        raise ValueError(f"KV copy: {len(d)} device pages but {len(h)} host pages")
    _check_range(d, dev.num_pages, "dev_pages")
    _check_range(h, host.num_pages, "host_pages")
    dest, dest_name = (h, "host_pages") if dest_is_host else (d, "dev_pages")
    if len(set(dest)) != len(dest):
        raise ValueError(f"KV copy: destination {dest_name} contains duplicate page ids")
    host_idx = torch.tensor(h, dtype=torch.long)
    if not d:
        return None, host_idx, h
    return torch.tensor(d, dtype=torch.long, device=dev.device), host_idx, h


def _as_list(pages: PageIds, name: str) -> list[int]:
    if isinstance(pages, torch.Tensor):
        if pages.dim() != 1 or pages.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"KV copy: {name} must be a 1-D integer tensor, got {tuple(pages.shape)} "
                             f"{pages.dtype}")
        return pages.tolist()
    return [int(p) for p in pages]


def _check_range(pages: list[int], limit: int, name: str) -> None:
    if pages and (min(pages) < 0 or max(pages) >= limit):
        bad = next(p for p in pages if not 0 <= p < limit)
        raise ValueError(f"KV copy: {name} has page id {bad} outside [0, {limit})")
