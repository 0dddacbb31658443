"""The engine's ``KVTransfer``: moves KV pages between its device and host buffers."""

from __future__ import annotations

from context_forge.cache.transfer import KVTransfer

from .kv_buffer import (
    DeviceKVBuffer,
    HostKVBuffer,
    copy_device_to_host,
    copy_host_to_device,
)


class BufferTransfer(KVTransfer):
    """Synchronous, bit-exact page copies between a ``DeviceKVBuffer`` and a ``HostKVBuffer``.

    The radix cache calls it when it writes a node back to host (device eviction, eager
    write-back) and when it loads a host node back to the device. Counts pages per direction.
    """

    def __init__(self, device: DeviceKVBuffer, host: HostKVBuffer) -> None:
        self.device = device
        self.host = host
        self.pages_to_host = 0
        self.pages_to_device = 0

    def device_to_host(self, device_pages: list[int], host_pages: list[int]) -> None:
        copy_device_to_host(self.device, self.host, device_pages, host_pages)
        self.pages_to_host += len(device_pages)

    def host_to_device(self, host_pages: list[int], device_pages: list[int]) -> None:
        copy_host_to_device(self.host, self.device, host_pages, device_pages)
        self.pages_to_device += len(device_pages)
