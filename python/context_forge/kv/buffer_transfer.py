"""The engine's ``KVTransfer``: moves KV pages between its device and host buffers."""

from __future__ import annotations

import torch

from context_forge.kv.transfer import KVTransfer

from context_forge.kv.buffer import (
    DeviceKVBuffer,
    HostKVBuffer,
    copy_device_to_host,
    copy_host_to_device,
)


class BufferTransfer(KVTransfer):
    """Bit-exact page copies between a ``DeviceKVBuffer`` and a ``HostKVBuffer``.

    The radix cache calls it when it writes a node back to host (device eviction, eager
    write-back) and when it loads a host node back to the device. Counts pages per direction.

    With ``async_write_back`` (a CUDA/ROCm device and a pinned host buffer) device->host copies
    are queued on a write-back stream (``kv.write_back.StreamWriteBack``) instead of blocking
    the caller. Whoever then touches the pages must wait for them: :meth:`fence` before the
    model's forward pass (its new KV may land in device pages a write-back is still reading), the
    prefetch copy stream before each load (``StreamCopier(fence=transfer.fence)``), and the
    synchronous ``host_to_device`` below fences itself. :meth:`synchronize` before reading host
    pages on the CPU.
    """

    def __init__(self, device: DeviceKVBuffer, host: HostKVBuffer, async_write_back: bool = False) -> None:
        self.device = device
        self.host = host
        self.pages_to_host = 0
        self.pages_to_device = 0
        self.write_back = None
        if async_write_back:
            if device.device.type != "cuda" or not host.pinned:
                raise ValueError("async_write_back needs a cuda device buffer and a pinned host buffer")
            from context_forge.kv.write_back import StreamWriteBack
            self.write_back = StreamWriteBack(device, host)

    def device_to_host(self, device_pages: list[int], host_pages: list[int]) -> None:
        if self.write_back is not None:
            self.write_back.copy(device_pages, host_pages)
        else:
            copy_device_to_host(self.device, self.host, device_pages, host_pages)
        self.pages_to_host += len(device_pages)

    def host_to_device(self, host_pages: list[int], device_pages: list[int]) -> None:
        self.fence()
        copy_host_to_device(self.host, self.device, host_pages, device_pages)
        self.pages_to_device += len(device_pages)

    def fence(self, stream: torch.cuda.Stream | None = None) -> None:
        """Make ``stream`` (default: the current one) wait for queued write-backs; no-op without them."""
        if self.write_back is not None:
            self.write_back.fence(stream)

    def synchronize(self) -> None:
        """Block until queued write-backs have landed in host memory."""
        if self.write_back is not None:
            self.write_back.synchronize()
