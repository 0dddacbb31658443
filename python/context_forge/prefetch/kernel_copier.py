"""``hicache_io_backend: kernel``: loads that land layer by layer, read by a kernel from pinned host memory.

Each unit is a range of whole layers of every page of the load, moved by one launch of
:func:`~context_forge.prefetch.uva_kernel.gather_layers` on the copy stream and followed by an
event: no staging buffer, no scatter pass, no copy per page. Units are sized to about
``unit_bytes`` (at least one layer), so interrupts fall between layers and a request that
starts before its prefix has landed (``prefetch_wait_mode: layer``) waits for each layer's event.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer

from .copier import DEFAULT_UNIT_BYTES, Unit
from .stream_copier import GpuCopier, pinned_index


@functools.cache
def kernel_copy_works(device: torch.device) -> str | None:
    """``None`` when the gather kernel reads pinned host memory correctly on ``device``, else why
    not (Triton missing, no mapped host memory, a wrong result). Checked once per device."""
    try:
        from .uva_kernel import gather_layers
    except Exception as exc:  # no Triton, or one that does not load here
        return f"the Triton kernel does not load: {exc!r}"
    try:
        shape = (3, 2, 2, 4, 2, 16)  # pages, layers, K/V, page size, heads, dim
        host = torch.arange(torch.Size(shape).numel(), dtype=torch.float16).view(shape).pin_memory()
        dev = torch.zeros(2, 2, 4, 4, 2, 16, dtype=torch.float16, device=device)
        with torch.cuda.device(device):
            hp = torch.tensor([2, 0], device=device)
            dp = torch.tensor([1, 3], device=device)
            gather_layers(host, dev, hp, dp, 0, 2)
            torch.cuda.synchronize(device)
        want = torch.zeros_like(dev)
        want[:, :, dp] = host[hp.cpu()].to(device).permute(1, 2, 0, 3, 4, 5)
        if not torch.equal(dev, want):
            return "the kernel's self-test copy came back wrong"
    except Exception as exc:  # e.g. Triton refusing a host pointer
        return f"the kernel cannot read pinned host memory: {exc!r}"
    return None


@dataclass
class _LayerLoad:
    host_index: torch.Tensor
    device_index: torch.Tensor
    caller_stream: torch.cuda.Stream


class KernelCopier(GpuCopier):
    """Layer-range units on one copy stream (see the module docstring). ``programs``: persistent
    programs per launch, the share of the GPU a load may occupy beside compute."""

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer,
                 unit_bytes: int = DEFAULT_UNIT_BYTES,
                 fence: Callable[[torch.cuda.Stream], None] | None = None, programs: int | None = None) -> None:
        super().__init__(device_kv, host_kv, fence)
        from .uva_kernel import DEFAULT_PROGRAMS, gather_layers

        if unit_bytes < 1:
            raise ValueError(f"unit_bytes must be >= 1, got {unit_bytes}")
        self.unit_bytes = unit_bytes
        self.programs = programs or DEFAULT_PROGRAMS
        self._gather = gather_layers
        if not host_kv.buffer.is_contiguous() or not device_kv.buffer.is_contiguous():
            raise ValueError("KernelCopier needs contiguous KV buffers")

    def units(self, num_pages: int) -> list[Unit]:
        layers = self.num_layers
        per_layer = max(1, num_pages * (self.bytes_per_page // layers))
        group = max(1, min(layers, self.unit_bytes // per_layer))
        return [Unit(0, num_pages, first, min(group, layers - first)) for first in range(0, layers, group)]

    def _begin(self, host_pages: Sequence[int], device_pages: Sequence[int]) -> _LayerLoad:
        dev = self.device_kv.device
        caller = torch.cuda.current_stream(dev)
        torch.cuda.set_stream(self.stream)
        if self.fence is not None:
            self.fence(self.stream)
        return _LayerLoad(pinned_index(host_pages, dev), pinned_index(device_pages, dev), caller)

    def _issue(self, state: _LayerLoad, unit: Unit, host_pages: Sequence[int],
               device_pages: Sequence[int]) -> torch.cuda.Event:
        self._gather(self.host_kv.buffer, self.device_kv.buffer, state.host_index[unit.start:unit.stop],
                     state.device_index[unit.start:unit.stop], unit.first_layer, unit.num_layers,
                     self.programs)
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def _end(self, state: _LayerLoad) -> None:
        torch.cuda.set_stream(state.caller_stream)
