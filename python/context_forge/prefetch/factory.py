"""Pick the page copier for a pair of KV buffers (``hicache_io_backend``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer

from .copier import DEFAULT_CHUNK_BYTES, DEFAULT_UNIT_BYTES, IO_BACKENDS, CpuCopier, PageCopier, chunk_pages_for
from .kernel_copier import KernelCopier, kernel_copy_works
from .stream_copier import StreamCopier

log = logging.getLogger(__name__)


def make_copier(device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                fence: Callable[[torch.cuda.Stream], None] | None = None,
                scatter_priority: int = 0, io_backend: str = "direct",
                unit_bytes: int = DEFAULT_UNIT_BYTES, layer_groups: int = 1) -> PageCopier:
    """The copier for these buffers: on a GPU with a pinned host tier the ``io_backend`` one
    (``kernel`` falls back to ``direct``, with a warning, when its self-test fails: no Triton,
    or host memory the GPU cannot read; ``direct`` lands in ``layer_groups`` groups of layers);
    otherwise the :class:`CpuCopier`."""
    if io_backend not in IO_BACKENDS:
        raise ValueError(f"unknown hicache_io_backend {io_backend!r}; choose one of {', '.join(IO_BACKENDS)}")
    pages = chunk_pages_for(host_kv.bytes_per_page, chunk_bytes)
    if device_kv.device.type != "cuda" or not host_kv.pinned:
        return CpuCopier(device_kv, host_kv, pages)
    if io_backend == "kernel":
        problem = kernel_copy_works(device_kv.device)
        if problem is None:
            return KernelCopier(device_kv, host_kv, unit_bytes, fence)
        log.warning("hicache_io_backend 'kernel' is unavailable here (%s); using 'direct' copies", problem)
    per_unit = -(-device_kv.num_layers // max(1, layer_groups))
    return StreamCopier(device_kv, host_kv, pages, fence, scatter_priority, per_unit)
