"""How KV bytes move between tiers. The cache core decides *which* pages move; a transfer moves them."""

from __future__ import annotations

from abc import ABC, abstractmethod


class KVTransfer(ABC):
    """Copies KV pages between the device and the host tier.

    The radix cache calls these synchronously when it writes a node back to host or loads it
    back to the device. The engine implements them over its KV tensors; the simulator counts
    bytes and time. ``device_pages[i]`` pairs with ``host_pages[i]``.
    """

    @abstractmethod
    def device_to_host(self, device_pages: list[int], host_pages: list[int]) -> None: ...

    @abstractmethod
    def host_to_device(self, host_pages: list[int], device_pages: list[int]) -> None: ...


class CountingTransfer(KVTransfer):
    """Moves nothing; counts pages moved each way (the simulator and CPU tests use it)."""

    def __init__(self) -> None:
        self.pages_to_host = 0
        self.pages_to_device = 0

    def device_to_host(self, device_pages: list[int], host_pages: list[int]) -> None:
        assert len(device_pages) == len(host_pages)
        self.pages_to_host += len(device_pages)

    def host_to_device(self, host_pages: list[int], device_pages: list[int]) -> None:
        assert len(device_pages) == len(host_pages)
        self.pages_to_device += len(device_pages)
