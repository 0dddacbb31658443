"""Copy-engine page movers on CUDA/ROCm streams: loads (``hicache_io_backend: direct``) and write-backs.

A ``direct`` load moves a chunk of ``chunk_pages`` pages (all layers) as one host->device copy per
run of consecutive host page ids (2 MiB per page for a Llama-3-8B shape at page size 16, never one
small copy per page per layer) into a device staging buffer, then one device-side scatter
(``index_copy_``) into the layer-major pages. The copies run on a dedicated copy stream and the
scatters on a second stream, double-buffered so the copy engine streams without pausing for
scatters; a chunk's host->device copies are issued by one ``torch._foreach_copy_`` call, so the
worker thread holds the GIL for microseconds per chunk, not per page. Interrupts fall between
chunks, and every layer is complete only once the last chunk is.

Write-back (device->host) runs on its own stream (:class:`StreamWriteBack`); loads and the
compute stream wait on its last event before touching pages it may still be reading or writing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from context_forge.engine.kv_buffer import DeviceKVBuffer, HostKVBuffer, page_runs

from .copier import PageCopier, Unit, check_plan, layer_chunk_units
from .gate import EventGate, LayerGate

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


def pinned_index(pages: Sequence[int], device: torch.device) -> torch.Tensor:
    """Page ids as a device tensor, uploaded on the current stream without blocking the caller."""
    host = torch.tensor(list(pages), dtype=torch.long, pin_memory=True)
    return host.to(device, non_blocking=True)


def run_pieces(host_pages: Sequence[int], staged: Sequence[torch.Tensor] | torch.Tensor,
               staged_block: torch.Tensor, host_views: Sequence[torch.Tensor],
               host_block: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching pieces of a staging buffer (pages in load order) and of the page-major host buffer,
    one per run of consecutive ``host_pages``: single pages as the pre-made views ``staged[i]`` /
    ``host_views[id]``, longer runs as slices of ``staged_block`` / ``host_block``."""
    staged_parts: list[torch.Tensor] = []
    host_parts: list[torch.Tensor] = []
    for off, first, count in page_runs(host_pages):
        if count == 1:
            staged_parts.append(staged[off])
            host_parts.append(host_views[first])
        else:
            staged_parts.append(staged_block[off:off + count])
            host_parts.append(host_block[first:first + count])
    return staged_parts, host_parts


def unit_pieces(host_pages: Sequence[int], staged: Sequence[torch.Tensor], staged_block: torch.Tensor,
                host_views: Sequence[torch.Tensor], host_block: torch.Tensor, first_layer: int,
                num_layers: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Destination and source pieces of one unit's host->staging copies. All layers: one piece per
    run of consecutive host pages (:func:`run_pieces`). A layer range: one contiguous piece per
    page, ``host_views[id][first:first + n]`` into ``staged[i][:n]`` (a page's layers are
    contiguous on the host; consecutive pages of a layer range are not)."""
    if num_layers == host_block.shape[1]:
        return run_pieces(host_pages, staged, staged_block, host_views, host_block)
    stop = first_layer + num_layers
    return ([staged[i][:num_layers] for i in range(len(host_pages))],
            [host_views[p][first_layer:stop] for p in host_pages])


def require_gpu_buffers(device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, who: str) -> None:
    if device_kv.device.type != "cuda":
        raise ValueError(f"{who} needs a cuda device buffer, got {device_kv.device}")
    if not host_kv.pinned:
        raise ValueError(f"{who} needs a pinned host buffer (HostKVBuffer(pin_memory=True))")


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
        check_plan(host, dev, host_pages, device_pages)
        if len(set(host_pages)) != len(host_pages):
            raise ValueError("write-back: destination host pages contain duplicates")
        if not device_pages:
            return
        if self._views is None:
            self._views = host.buffer.unbind(0)
        views = self._views
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(self.compute_stream)
            idx = pinned_index(device_pages, dev.device)
            staged = dev.buffer.index_select(2, idx).permute(2, 0, 1, 3, 4, 5).contiguous()
            src, dst = run_pieces(host_pages, staged, staged, views, host.buffer)
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


class GpuCopier(PageCopier):
    """What the GPU copiers share: a copy stream, per-unit events, fencing against write-backs."""

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer,
                 fence: Callable[[torch.cuda.Stream], None] | None = None) -> None:
        require_gpu_buffers(device_kv, host_kv, type(self).__name__)
        super().__init__(device_kv, host_kv)
        self.stream = torch.cuda.Stream(device_kv.device)
        self.fence = fence

    def new_gate(self) -> LayerGate:
        return EventGate(self.num_layers)

    def _stamp(self) -> torch.cuda.Event:
        assert self.meter is not None
        with torch.cuda.stream(self.stream):
            return self.meter.mark()

    def _wait(self, handle: torch.cuda.Event) -> None:
        handle.synchronize()


@dataclass
class _ChunkLoad:
    index: torch.Tensor
    caller_stream: torch.cuda.Stream


class StreamCopier(GpuCopier):
    """``direct``: double-buffered staging, host->device copies on ``stream``, the scatter into
    layer-major pages on ``scatter_stream``; each unit is a chunk of pages with all layers.

    Chunk ``i`` lands in staging buffer ``i % 2`` on the copy stream while the scatter stream
    spreads chunk ``i - 1`` from the other buffer. A chunk costs about ten calls into torch
    whatever its size (each lets another Python thread, such as the engine's, take the GIL).

    ``fence``: called with the copy stream before each load so that it waits for write-backs
    still writing the host pages it reads (the scatter stream waits for the copy stream, so it
    is ordered after the fence too). ``scatter_priority``: CUDA priority of the scatter stream
    (lower is more urgent).
    """

    granularity: ClassVar[str] = "chunk"

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, chunk_pages: int,
                 fence: Callable[[torch.cuda.Stream], None] | None = None, scatter_priority: int = 0,
                 layers_per_unit: int | None = None) -> None:
        super().__init__(device_kv, host_kv, fence)
        if chunk_pages < 1:
            raise ValueError(f"chunk_pages must be >= 1, got {chunk_pages}")
        self.chunk_pages = chunk_pages
        self.layers_per_unit = min(layers_per_unit or device_kv.num_layers, device_kv.num_layers)
        dev = device_kv.device
        self.scatter_stream = torch.cuda.Stream(dev, priority=scatter_priority)
        shape = (chunk_pages, *host_kv.buffer.shape[1:])
        self.staging = tuple(torch.empty(shape, dtype=device_kv.dtype, device=dev) for _ in range(2))
        self._staging_views = tuple(buf.unbind(0) for buf in self.staging)
        self._scatter_src = tuple(buf.permute(1, 2, 0, 3, 4, 5) for buf in self.staging)
        self._scattered: list[torch.cuda.Event | None] = [None, None]
        self._next = 0
        self._host_views: tuple[torch.Tensor, ...] | None = None

    def units(self, num_pages: int) -> list[Unit]:
        return layer_chunk_units(num_pages, self.num_layers, self.chunk_pages, self.layers_per_unit)

    def _begin(self, host_pages: Sequence[int], device_pages: Sequence[int]) -> _ChunkLoad:
        if self._host_views is None:
            self._host_views = self.host_kv.buffer.unbind(0)
        if self.fence is not None:
            self.fence(self.stream)
        caller = torch.cuda.current_stream(self.device_kv.device)
        torch.cuda.set_stream(self.scatter_stream)
        return _ChunkLoad(pinned_index(device_pages, self.device_kv.device), caller)

    def _issue(self, state: _ChunkLoad, unit: Unit, host_pages: Sequence[int],
               device_pages: Sequence[int]) -> torch.cuda.Event:
        buf = self._next
        self._next ^= 1
        staging, views = self.staging[buf], self._staging_views[buf]
        hv = self._host_views
        assert hv is not None
        n = len(host_pages)
        g0, g = unit.first_layer, unit.num_layers
        dst, src = unit_pieces(host_pages, views, staging, hv, self.host_kv.buffer, g0, g)
        copy, scatter = self.stream, self.scatter_stream
        previous = self._scattered[buf]
        if previous is not None:
            copy.wait_event(previous)  # the scatter of chunk i - 2 has read this buffer
        torch.cuda.set_stream(copy)
        _foreach_copy(dst, src)
        landed = torch.cuda.Event()
        landed.record(copy)
        scatter.wait_event(landed)
        torch.cuda.set_stream(scatter)
        source = self._scatter_src[buf][:g]
        if n != self.chunk_pages:
            source = source[:, :, :n]
        target = self.device_kv.buffer if g == self.num_layers else self.device_kv.buffer[g0:g0 + g]
        target.index_copy_(2, state.index[unit.start:unit.stop], source)
        scattered = torch.cuda.Event()
        scattered.record(scatter)
        self._scattered[buf] = scattered
        return scattered

    def _end(self, state: _ChunkLoad) -> None:
        torch.cuda.set_stream(state.caller_stream)
