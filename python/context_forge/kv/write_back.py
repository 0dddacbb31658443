"""Device->host page copies on their own CUDA/ROCm stream (the cache's write-backs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.kv.copy import _foreach_copy, check_plan, pinned_index, run_pieces


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
