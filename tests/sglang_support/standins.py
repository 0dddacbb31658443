"""CPU stand-ins for what SGLang's cache layer gets from a GPU build (hardware absent here).

- ``torchvision``: SGLang's config modules import it, and its wheels are CUDA-linked. A stub
  package is placed in ``sys.modules`` only while SGLang's modules are imported, then removed,
  so nothing else in the test process (e.g. transformers' availability checks) sees it.
- Pinned host memory: SGLang registers the host KV pool with ``cudaHostRegister``; on CPU the
  pool is plain memory.
- ``transfer_kv_direct``: the ``sgl_kernel`` copy op of the ``direct`` I/O backend with the
  ``layer_first`` host layout; on CPU an indexed tensor copy per layer does the same.
"""
from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from unittest import mock

import torch

__all__ = ["cpu_hicache", "import_sglang_cache_layer", "torchvision_standin"]

SGLANG_MODULES = (
    "sglang.srt.server_args",
    "sglang.srt.mem_cache.unified_radix_cache",
    "sglang.srt.mem_cache.registry",
    "sglang.srt.mem_cache.memory_pool",
    "sglang.srt.mem_cache.allocator",
    "sglang.srt.mem_cache.pool_host.common",
    "sglang.srt.mem_cache.pool_host.mha",
    "sglang.srt.mem_cache.common",
    "sglang.srt.managers.schedule_batch",
    "sglang.srt.sampling.sampling_params",
    "sglang.srt.entrypoints.openai.protocol",
    "sglang.srt.plugins",
)
_TORCHVISION = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.transforms.v2",
    "torchvision.transforms.v2.functional",
)


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{name}.{attr} is a CPU test stand-in; torchvision is not installed")

        return unavailable

    module.__getattr__ = __getattr__
    return module


@contextlib.contextmanager
def torchvision_standin() -> Iterator[None]:
    """A stub ``torchvision`` in ``sys.modules`` for the duration (only if none is importable)."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    try:  # transformers caches "is torchvision available" on first use: settle it as False first
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()
    except ImportError:
        pass
    modules = {name: _stub_module(name) for name in _TORCHVISION}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    for name in ("torchvision.transforms", "torchvision.transforms.functional"):
        modules[name].InterpolationMode = InterpolationMode
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in _TORCHVISION:
            if sys.modules.get(name) is modules[name]:
                del sys.modules[name]


def import_sglang_cache_layer() -> None:
    """Import the SGLang modules the tests use (raises ImportError when SGLang is missing)."""
    with torchvision_standin():
        for name in SGLANG_MODULES:
            importlib.import_module(name)


def _plain_host_alloc(dims, dtype, device, pin_memory, allocator, registration_granularity_bytes=None):
    return torch.zeros(dims, dtype=dtype, device=device)


def _transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size=1, **_):
    for src, dst in zip(src_layers, dst_layers):
        dst[dst_indices] = src[src_indices]


@contextlib.contextmanager
def cpu_hicache() -> Iterator[None]:
    """Patch the pinned-allocation and direct-copy ops for the duration."""
    from sglang.srt.mem_cache.pool_host import common, mha

    with mock.patch.dict(common.ALLOC_MEMORY_FUNCS, {"cpu": _plain_host_alloc}), mock.patch.object(
        mha, "transfer_kv_direct", _transfer_kv_direct, create=True
    ):
        yield
