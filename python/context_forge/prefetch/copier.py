"""Page copiers: move a load's host pages into its device pages, in chunks, for the controller.

Layouts (``engine.kv_buffer``): host ``[pages, layers, 2, page_size, heads, dim]`` keeps one page
of every layer contiguous; device ``[layers, 2, pages, page_size, heads, dim]`` is layer-major.
A chunk of ``chunk_pages`` pages therefore moves as one host->device copy per run of consecutive
host page ids (2 MiB per page for a Llama-3-8B shape at page size 16, never one small copy per
page per layer) into a device staging buffer, then one device-side scatter (``index_copy_``)
into the layer-major pages. On CUDA (and ROCm, through the same ``torch.cuda`` API) the copies
run on a dedicated copy stream and the scatters on a second stream, double-buffered so the copy
engine streams without pausing for scatters; the host->device copies of a chunk are issued by
one ``torch._foreach_copy_`` call so the worker thread holds the GIL for microseconds per chunk,
not per page. At most two chunks are in flight: the worker waits for chunk ``i - 1`` after
issuing chunk ``i``, so an on-demand load that interrupts a prefetch between chunks waits behind
at most two chunks.

Interrupt granularity is a chunk of pages carrying all layers: the host layout keeps a page's
layers together, so per-layer granularity would need one small copy per page per layer.

Write-back (device->host) runs on its own stream (:class:`StreamWriteBack`); loads and the
compute stream wait on its last event before touching pages it may still be reading or writing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from context_forge.engine.kv_buffer import DeviceKVBuffer, HostKVBuffer, copy_host_to_device

DEFAULT_CHUNK_BYTES = 64 << 20
"""Staging per chunk: 32 pages of a Llama-3-8B shape (about 1.5 ms of copying at 44 GB/s)."""


def page_runs(pages: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive ids as ``(offset in pages, first id, count)``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    n = len(pages)
    for i in range(1, n + 1):
        if i == n or pages[i] != pages[i - 1] + 1:
            runs.append((start, pages[start], i - start))
            start = i
    return runs


def _check_plan(host: HostKVBuffer, dev: DeviceKVBuffer, host_pages: Sequence[int],
                device_pages: Sequence[int]) -> None:
    if len(host_pages) != len(device_pages):
        raise ValueError(f"page copy: {len(host_pages)} host pages but {len(device_pages)} device pages")
    for pages, limit, name in ((host_pages, host.num_pages, "host"), (device_pages, dev.num_pages, "device")):
        bad = [p for p in pages if not 0 <= p < limit]
        if bad:
            raise ValueError(f"page copy: {name} page id {bad[0]} outside [0, {limit})")


class PageCopier(ABC):
    """Copies host pages to device pages for the prefetch worker thread (one load at a time)."""

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, chunk_pages: int) -> None:
        if chunk_pages < 1:
            raise ValueError(f"chunk_pages must be >= 1, got {chunk_pages}")
        self.device_kv = device_kv
        self.host_kv = host_kv
        self.chunk_pages = chunk_pages

    @property
    def bytes_per_page(self) -> int:
        return self.host_kv.bytes_per_page

    def load(self, host_pages: Sequence[int], device_pages: Sequence[int],
             between_chunks: Callable[[], None] | None = None) -> None:
        """Copy ``host_pages[i]`` -> ``device_pages[i]`` (all layers, K and V), chunk by chunk,
        calling ``between_chunks`` before every chunk but the first (the interrupt point: it may
        run other loads through this copier). Returns once the pages have landed."""
        _check_plan(self.host_kv, self.device_kv, host_pages, device_pages)
        state = self._begin(device_pages)
        try:
            step = self.chunk_pages
            for start in range(0, len(host_pages), step):
                if start and between_chunks is not None:
                    between_chunks()
                self._chunk(state, host_pages[start:start + step], device_pages[start:start + step], start)
        finally:
            self._end(state)

    def _begin(self, device_pages: Sequence[int]) -> Any:
        """Per-load setup before the first chunk; returns the load's state (loads may nest)."""
        return None

    @abstractmethod
    def _chunk(self, state: Any, host_pages: Sequence[int], device_pages: Sequence[int], offset: int) -> None:
        """Issue one chunk (``offset``: its position in the load's page list)."""

    def _end(self, state: Any) -> None:
        """Block until every issued chunk of this load has landed."""


class CpuCopier(PageCopier):
    """The thread path (no copy streams): the worker thread copies each chunk itself."""

    def _chunk(self, state: Any, host_pages: Sequence[int], device_pages: Sequence[int], offset: int) -> None:
        copy_host_to_device(self.host_kv, self.device_kv, list(host_pages), list(device_pages))


_foreach_ok = True
"""Whether ``torch._foreach_copy_`` takes mixed host/device lists here (diagnostics: benchmarks
report it); after one failure every copy goes through the per-tensor loop."""


def _foreach_copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """``dst[i].copy_(src[i], non_blocking=True)`` for every ``i``, in one call when torch can."""
    global _foreach_ok
    if _foreach_ok:
        try:
            torch._foreach_copy_(dst, src, non_blocking=True)
            return
        except (AttributeError, RuntimeError, TypeError, NotImplementedError):
            _foreach_ok = False
    for d, s in zip(dst, src):
        d.copy_(s, non_blocking=True)


def foreach_copy_works() -> bool:
    return _foreach_ok


def _pinned_index(pages: Sequence[int], device: torch.device) -> torch.Tensor:
    """Page ids as a device tensor, uploaded without blocking the calling thread."""
    host = torch.tensor(list(pages), dtype=torch.long, pin_memory=True)
    return host.to(device, non_blocking=True)


class StreamWriteBack:
    """Device->host page copies on their own stream (the cache's write-backs).

    ``copy`` orders itself after the compute stream (which produced the pages), queues the copy
    and returns; ``fence(stream)`` makes another stream wait for every write-back queued so far
    (a load reading those host pages, or compute reusing the freed device pages).
    """

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer,
                 compute_stream: torch.cuda.Stream | None = None) -> None:
        dev = device_kv.device
        self.device_kv = device_kv
        self.host_kv = host_kv
        self.compute_stream = compute_stream or torch.cuda.current_stream(dev)
        self.stream = torch.cuda.Stream(dev)
        self.event: torch.cuda.Event | None = None
        self._views: tuple[torch.Tensor, ...] | None = None

    def copy(self, device_pages: Sequence[int], host_pages: Sequence[int]) -> None:
        dev, host = self.device_kv, self.host_kv
        _check_plan(host, dev, host_pages, device_pages)
        if len(set(host_pages)) != len(host_pages):
            raise ValueError("write-back: destination host pages contain duplicates")
        if not device_pages:
            return
        if self._views is None:
            self._views = host.buffer.unbind(0)
        views = self._views
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(self.compute_stream)
            idx = _pinned_index(device_pages, dev.device)
            staged = dev.buffer.index_select(2, idx).permute(2, 0, 1, 3, 4, 5).contiguous()
            dst, src = [], []
            for off, first, count in page_runs(host_pages):
                if count == 1:
                    dst.append(views[first])
                    src.append(staged[off])
                else:
                    dst.append(host.buffer[first:first + count])
                    src.append(staged[off:off + count])
            _foreach_copy(dst, src)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.event = event

    def fence(self, stream: torch.cuda.Stream | None = None) -> None:
        """Make ``stream`` (default: the current one) wait for all queued write-backs."""
        if self.event is not None:
            (stream or torch.cuda.current_stream(self.device_kv.device)).wait_event(self.event)

    def synchronize(self) -> None:
        """Block the caller until every queued write-back has landed (e.g. before reading host pages on the CPU)."""
        if self.event is not None:
            self.event.synchronize()


@dataclass
class _StreamLoad:
    index: torch.Tensor
    caller_stream: torch.cuda.Stream
    last: torch.cuda.Event | None = None


class StreamCopier(PageCopier):
    """CUDA/ROCm path: double-buffered staging, host->device copies on ``stream``, the scatter into
    layer-major pages on ``scatter_stream``, completion events.

    Chunk ``i`` lands in staging buffer ``i % 2`` on the copy stream while the scatter stream
    spreads chunk ``i - 1`` from the other buffer, so the copy engine never waits for a scatter
    kernel. The worker thread blocks (GIL released) on chunk ``i - 1``'s scatter event after
    issuing chunk ``i``: at most two chunks are in flight.

    A chunk costs about ten calls into torch whatever its size (one ``_foreach_copy_`` for its
    host->device copies, one ``index_copy_``, reused events, no stream context managers): each
    call lets another Python thread take the GIL, and the engine's decode thread is one.

    ``fence``: called with the copy stream before each load so that it waits for write-backs
    that may still be writing the host pages it reads (or reading device pages it overwrites:
    the scatter stream waits for the copy stream, so it is ordered after the fence too).

    ``scatter_priority``: CUDA priority of the scatter stream (lower is more urgent; -1 is high on
    current GPUs). At the default 0, a GPU kept busy by CUDA-graph decode dispatches the scatter
    kernels only between decode steps, which throttles the prefetch (measured on the H100: 7 GB/s
    alongside graph decode, 42 GB/s alongside eager decode); a high priority lets scatter blocks
    in as decode kernels retire, trading some decode time for prefetch bandwidth.
    """

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, chunk_pages: int,
                 fence: Callable[[torch.cuda.Stream], None] | None = None, scatter_priority: int = 0) -> None:
        super().__init__(device_kv, host_kv, chunk_pages)
        if device_kv.device.type != "cuda":
            raise ValueError(f"StreamCopier needs a cuda device buffer, got {device_kv.device}")
        if not host_kv.pinned:
            raise ValueError("StreamCopier needs a pinned host buffer (HostKVBuffer(pin_memory=True))")
        dev = device_kv.device
        self.stream = torch.cuda.Stream(dev)
        self.scatter_stream = torch.cuda.Stream(dev, priority=scatter_priority)
        self.fence = fence
        shape = (chunk_pages, *host_kv.buffer.shape[1:])
        self.staging = tuple(torch.empty(shape, dtype=device_kv.dtype, device=dev) for _ in range(2))
        self._staging_views = tuple(buf.unbind(0) for buf in self.staging)
        self._scatter_src = tuple(buf.permute(1, 2, 0, 3, 4, 5) for buf in self.staging)
        self._landed = (torch.cuda.Event(), torch.cuda.Event())
        self._scattered = (torch.cuda.Event(), torch.cuda.Event())
        self._next = 0
        self._host_views: tuple[torch.Tensor, ...] | None = None

    def _begin(self, device_pages: Sequence[int]) -> _StreamLoad:
        if self._host_views is None:
            self._host_views = self.host_kv.buffer.unbind(0)
        if self.fence is not None:
            self.fence(self.stream)
        caller = torch.cuda.current_stream(self.device_kv.device)
        torch.cuda.set_stream(self.scatter_stream)
        return _StreamLoad(_pinned_index(device_pages, self.device_kv.device), caller)

    def _chunk(self, state: _StreamLoad, host_pages: Sequence[int], device_pages: Sequence[int],
               offset: int) -> None:
        buf = self._next
        self._next ^= 1
        staging, views = self.staging[buf], self._staging_views[buf]
        hv = self._host_views
        assert hv is not None
        host = self.host_kv.buffer
        n = len(host_pages)
        dst, src = [], []
        for off, first, count in page_runs(host_pages):
            if count == 1:
                dst.append(views[off])
                src.append(hv[first])
            else:
                dst.append(staging[off:off + count])
                src.append(host[first:first + count])
        landed, scattered = self._landed[buf], self._scattered[buf]
        copy, scatter = self.stream, self.scatter_stream
        copy.wait_event(scattered)  # the scatter of chunk i - 2 has read this buffer (no-op if none)
        torch.cuda.set_stream(copy)
        _foreach_copy(dst, src)
        landed.record(copy)
        scatter.wait_event(landed)
        torch.cuda.set_stream(scatter)
        source = self._scatter_src[buf] if n == self.chunk_pages else self._scatter_src[buf][:, :, :n]
        self.device_kv.buffer.index_copy_(2, state.index[offset:offset + n], source)
        scattered.record(scatter)
        if state.last is not None:
            state.last.synchronize()
        state.last = scattered

    def _end(self, state: _StreamLoad) -> None:
        torch.cuda.set_stream(state.caller_stream)
        if state.last is not None:
            state.last.synchronize()
            state.last = None


def chunk_pages_for(bytes_per_page: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Pages per chunk so that a chunk moves about ``chunk_bytes``."""
    return max(1, chunk_bytes // max(1, bytes_per_page))


def make_copier(device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                fence: Callable[[torch.cuda.Stream], None] | None = None,
                scatter_priority: int = 0) -> PageCopier:
    """A :class:`StreamCopier` for a GPU buffer with a pinned host tier, else the :class:`CpuCopier`."""
    pages = chunk_pages_for(host_kv.bytes_per_page, chunk_bytes)
    if device_kv.device.type == "cuda" and host_kv.pinned:
        return StreamCopier(device_kv, host_kv, pages, fence, scatter_priority)
    return CpuCopier(device_kv, host_kv, pages)
