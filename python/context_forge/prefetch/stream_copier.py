"""Copy-engine page movers on CUDA/ROCm streams: loads (``hicache_io_backend: direct``) and write-backs.

A ``direct`` load moves a chunk of ``chunk_pages`` pages (all layers) as one host->device copy per
run of consecutive host page ids (2 MiB per page for a Llama-3-8B shape at page size 16, never one
small copy per page per layer) into a device staging buffer, then one device-side scatter
(``index_copy_``) into the layer-major pages. The copies run on a dedicated copy stream and the
scatters on a second stream, double-buffered so the copy engine streams without pausing for
scatters; a chunk's host->device copies are issued by one ``torch._foreach_copy_`` call, so the
worker thread holds the GIL for microseconds per chunk, not per page. Interrupts fall between
chunks, and every layer is complete only once the last chunk is.

Write-back (device->host) runs on its own stream (:class:`context_forge.kv.write_back.StreamWriteBack`); loads and the
compute stream wait on its last event before touching pages it may still be reading or writing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.kv.copy import (  # noqa: F401  (foreach_copy_works: benchmarks report it)
    _foreach_copy, check_plan, foreach_copy_works, pinned_index, require_gpu_buffers, unit_pieces)
from context_forge.kv.write_back import StreamWriteBack  # noqa: F401  (exported here too)

from .copier import PageCopier, Unit, layer_chunk_units
from .gate import EventGate, LayerGate

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
