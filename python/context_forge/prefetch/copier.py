"""Page copiers: move a load's host pages into its device pages, unit by unit, for the controller.

Layouts (``kv.buffer``): host ``[pages, layers, 2, page_size, heads, dim]`` keeps one page
of every layer contiguous; device ``[layers, 2, pages, page_size, heads, dim]`` is layer-major.

A load is issued as a sequence of **units** (a range of the load's pages times a range of
layers). Between units the controller may run on-demand loads (the interrupt point), and after
the last page range of a layer range those layers are complete for the whole load, which is
what a :class:`~context_forge.prefetch.gate.LayerGate` is told. At most two units are in flight:
after issuing unit ``i`` the worker waits for unit ``i - 1`` (unless a request is waiting for
this load: ``gate.expedite``), so an interrupting load waits behind at most two units.

Copiers (``hicache_io_backend`` picks the GPU one):

- :class:`CpuCopier` (no GPU, or an unpinned host tier): the worker thread copies each unit
  itself, layer by layer (units: one layer times ``chunk_pages`` pages).
- :class:`~context_forge.prefetch.kernel_copier.KernelCopier` (``kernel``): a Triton kernel on a
  copy stream reads pinned host memory directly, a few layers of all pages per launch; units are
  layer ranges, so loads land layer by layer and interrupts fall between layers.
- :class:`~context_forge.prefetch.stream_copier.StreamCopier` (``direct``, the default):
  copy-engine copies of page chunks into a staging buffer, then a device-side scatter; units are
  page chunks of all layers (interrupts between chunks; every layer complete with the last chunk)
  or, with ``layer_groups > 1``, of one layer group at a time, so loads land group by group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.kv.copy import check_plan

from .gate import LayerGate, ThreadGate
from .meter import TransferMeter


DEFAULT_CHUNK_BYTES = 64 << 20
"""``direct``: staging per chunk, 32 pages of a Llama-3-8B shape (about 1.5 ms at 44 GB/s)."""

DEFAULT_UNIT_BYTES = 16 << 20
"""``kernel``: bytes per launch (whole layers of the load's pages, at least one layer)."""

IO_BACKENDS = ("kernel", "direct")

DEFAULT_LAYER_GROUPS = 4
"""``direct`` with layer waiting: a load lands in this many layer groups (a request's forward pass
starts on the first group while the others copy)."""


@dataclass(frozen=True)
class Unit:
    """Pages ``[start, stop)`` of a load's page list, layers ``[first_layer, first_layer + num_layers)``."""

    start: int
    stop: int
    first_layer: int
    num_layers: int


class PageCopier(ABC):
    """Copies host pages to device pages for the prefetch worker thread (one load at a time;
    a load may run others at its interrupt points)."""

    granularity: ClassVar[str] = "layer"
    """Where interrupt points fall: ``layer`` (between layers) or ``chunk`` (between page chunks)."""

    pace = True
    """Keep at most two units in flight (the interrupt points need it); ``False`` issues a load's
    units back to back (benchmarks compare the two)."""

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer) -> None:
        self.device_kv = device_kv
        self.host_kv = host_kv
        self.meter: TransferMeter | None = None
        """Times every unit (``prefetch.meter``) when set; the controller polls it."""

    @property
    def bytes_per_page(self) -> int:
        return self.host_kv.bytes_per_page

    @property
    def num_layers(self) -> int:
        return self.device_kv.num_layers

    def new_gate(self) -> LayerGate:
        """A gate of the kind this copier marks (``prefetch_wait_mode: layer``)."""
        return ThreadGate(self.num_layers)

    def load(self, host_pages: Sequence[int], device_pages: Sequence[int],
             between: Callable[[], None] | None = None, gate: LayerGate | None = None,
             kind: str = "prefetch") -> None:
        """Copy ``host_pages[i]`` -> ``device_pages[i]`` (all layers, K and V), unit by unit,
        calling ``between`` before every unit but the first (the interrupt point: it may run
        other loads through this copier) and marking ``gate`` as layers complete. Returns once
        the pages have landed; on failure fails ``gate`` and raises. ``kind`` (``prefetch`` or
        ``demand``) labels the units' timings in ``meter``."""
        check_plan(self.host_kv, self.device_kv, host_pages, device_pages)
        n = len(host_pages)
        state = self._begin(host_pages, device_pages)
        pending: Any = None
        meter = self.meter
        try:
            for i, u in enumerate(self.units(n)):
                if i and between is not None:
                    between()
                t0 = self._stamp() if meter is not None else None
                handle = self._issue(state, u, host_pages[u.start:u.stop], device_pages[u.start:u.stop])
                if meter is not None:
                    nbytes = (u.stop - u.start) * self.bytes_per_page * u.num_layers // self.num_layers
                    meter.stop(t0, nbytes, kind, self._stamp())
                if gate is not None and u.stop == n:
                    gate.mark(u.first_layer, u.num_layers, handle)
                if pending is not None and self.pace and not (gate is not None and gate.expedite):
                    self._wait(pending)
                pending = handle
            if pending is not None:
                self._wait(pending)
        except BaseException:
            if gate is not None:
                gate.fail()
            raise
        finally:
            self._end(state)

    @abstractmethod
    def units(self, num_pages: int) -> list[Unit]:
        """The units of a load of ``num_pages`` pages, in issue order; every (page, layer) once,
        and the units of a layer range ending with the one that reaches ``num_pages``."""

    def _stamp(self) -> Any:
        """A timing mark on the stream that runs the copies (the CPU: now)."""
        assert self.meter is not None
        return self.meter.mark()

    def _begin(self, host_pages: Sequence[int], device_pages: Sequence[int]) -> Any:
        """Per-load setup; returns the load's state (loads may nest)."""
        return None

    @abstractmethod
    def _issue(self, state: Any, unit: Unit, host_pages: Sequence[int], device_pages: Sequence[int]) -> Any:
        """Issue one unit (``host_pages``/``device_pages``: its slice of the load); returns a
        handle that completes when it has landed (``None``: landed already)."""

    def _wait(self, handle: Any) -> None:
        """Block until ``handle`` has landed."""

    def _end(self, state: Any) -> None:
        """Per-load teardown (runs after a failure too)."""


class CpuCopier(PageCopier):
    """The thread path (no copy streams): the worker thread copies each unit itself, layer by
    layer, ``chunk_pages`` pages at a time."""

    def __init__(self, device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, chunk_pages: int) -> None:
        super().__init__(device_kv, host_kv)
        if chunk_pages < 1:
            raise ValueError(f"chunk_pages must be >= 1, got {chunk_pages}")
        self.chunk_pages = chunk_pages

    def units(self, num_pages: int) -> list[Unit]:
        return layer_chunk_units(num_pages, self.num_layers, self.chunk_pages, 1)

    def _issue(self, state: Any, unit: Unit, host_pages: Sequence[int], device_pages: Sequence[int]) -> None:
        dev = self.device_kv
        hidx = torch.tensor(list(host_pages), dtype=torch.long)
        didx = torch.tensor(list(device_pages), dtype=torch.long, device=dev.device)
        for layer in range(unit.first_layer, unit.first_layer + unit.num_layers):
            src = self.host_kv.buffer[:, layer].index_select(0, hidx).to(dev.device)
            dev.buffer[layer].index_copy_(1, didx, src.transpose(0, 1))


def layer_chunk_units(num_pages: int, num_layers: int, chunk_pages: int, layers_per_unit: int) -> list[Unit]:
    """Units of ``layers_per_unit`` layers times ``chunk_pages`` pages, layer group by layer group
    (every page of a group before the next group), so groups land in order."""
    step, group = max(1, chunk_pages), max(1, min(layers_per_unit, num_layers))
    return [Unit(s, min(s + step, num_pages), first, min(group, num_layers - first))
            for first in range(0, num_layers, group) for s in range(0, num_pages, step)]


def chunk_pages_for(bytes_per_page: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Pages per chunk so that a chunk moves about ``chunk_bytes``."""
    return max(1, chunk_bytes // max(1, bytes_per_page))
