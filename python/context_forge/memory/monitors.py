"""Device-memory monitors: how much memory the accelerator has in use.

Each monitor reads one device through one library. All libraries are optional: nothing here
imports torch, ``pynvml`` (package ``nvidia-ml-py``) or ``pyrsmi`` until a monitor is built.

Registry (``get_monitor(name)``):

- ``torch``: ``torch.cuda.mem_get_info``; needs a CUDA or ROCm build of torch and a visible device.
- ``nvml``: NVML ``nvmlDeviceGetMemoryInfo``; needs package ``nvidia-ml-py`` (module ``pynvml``).
- ``rocm``: ROCm SMI through ``pyrsmi.rocml``; needs package ``pyrsmi``.
- ``none``: no signal, ``read()`` is always ``None``; needs nothing.

A monitor never raises once built: construction records why it cannot work
(``unavailable_reason``), ``available()`` reports it and ``read()`` returns ``None`` when a
reading fails. ``get_monitor`` turns an unavailable explicit choice into a
``MonitorUnavailableError`` naming the missing package or device; ``auto_monitor`` tries
candidates in order and settles on ``none`` rather than raise.

``device_index`` is the index torch uses (``cuda:N``). NVML and ROCm SMI number devices
physically, so the index is mapped through ``CUDA_VISIBLE_DEVICES`` (NVML) or
``HIP_VISIBLE_DEVICES`` / ``ROCR_VISIBLE_DEVICES`` / ``CUDA_VISIBLE_DEVICES`` (ROCm) when set.
"""
from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from context_forge.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "MemoryMonitor",
    "MemoryReading",
    "MonitorUnavailableError",
    "auto_monitor",
    "get_monitor",
    "monitor_names",
    "register_monitor",
]


class MonitorUnavailableError(RuntimeError):
    """An explicitly requested memory monitor cannot work here (missing package or device)."""


@dataclass(frozen=True)
class MemoryReading:
    """One reading of a device's memory, in bytes."""

    used_bytes: int
    total_bytes: int

    @property
    def used_fraction(self) -> float:
        """``used / total`` clamped to [0, 1]; 1.0 when the total is not positive."""
        if self.total_bytes <= 0:
            return 1.0
        return min(1.0, max(0.0, self.used_bytes / self.total_bytes))


class MemoryMonitor(ABC):
    """Reads one device's memory use. Subclasses set ``name``, ``package`` and ``_setup``."""

    name: ClassVar[str]
    package: ClassVar[str | None] = None
    """The pip package the monitor needs; ``None`` when it needs none."""

    def __init__(self, device_index: int = 0) -> None:
        if isinstance(device_index, bool) or not isinstance(device_index, int) or device_index < 0:
            raise ValueError(f"device_index must be a non-negative int, got {device_index!r}")
        self.device_index = device_index
        self.unavailable_reason: str | None = None
        self._closed = False
        try:
            self._setup()
        except ImportError as exc:
            self.unavailable_reason = str(exc)
        except Exception as exc:  # library init failures come in many types
            self.unavailable_reason = f"{type(exc).__name__}: {exc}"

    @abstractmethod
    def _setup(self) -> None:
        """Import the library and find the device; raise (any exception) if that fails,
        or set ``unavailable_reason``."""

    @abstractmethod
    def _read(self) -> MemoryReading:
        """One reading; may raise, ``read()`` turns failures into ``None``."""

    def _close(self) -> None:
        """Release the library (called once, only when the monitor was available)."""

    def available(self) -> bool:
        """Whether ``read()`` can return readings."""
        return self.unavailable_reason is None and not self._closed

    def read(self) -> MemoryReading | None:
        """The current reading, or ``None`` when unavailable or the library call failed."""
        if not self.available():
            return None
        try:
            reading = self._read()
        except Exception as exc:
            logger.debug("memory monitor %s: read failed: %s", self.name, exc)
            return None
        if reading.total_bytes <= 0 or reading.used_bytes < 0:
            return None
        return reading

    def close(self) -> None:
        """Release the library; idempotent. ``read()`` returns ``None`` afterwards."""
        if self._closed:
            return
        was_available = self.unavailable_reason is None
        self._closed = True
        if was_available:
            try:
                self._close()
            except Exception as exc:
                logger.debug("memory monitor %s: close failed: %s", self.name, exc)

    def __repr__(self) -> str:
        state = "available" if self.available() else f"unavailable ({self.unavailable_reason})"
        return f"{type(self).__name__}(device_index={self.device_index}, {state})"


_REGISTRY: Registry[type[MemoryMonitor]] = Registry("memory monitor")


def register_monitor(name: str) -> Callable[[type[MemoryMonitor]], type[MemoryMonitor]]:
    """Class decorator adding a monitor to the registry under ``name``."""
    return _REGISTRY.register(name)


def monitor_names() -> list[str]:
    """Registered monitor names, in registration order."""
    return _REGISTRY.names()


def _import(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"package {package!r} is not installed (import {module} failed: {exc}); "
            f"pip install {package}"
        ) from exc


def _physical_index(device_index: int, env_vars: tuple[str, ...]) -> int | str:
    """Map a torch device index to the library's numbering through the first set env var.

    Returns an int, or the raw entry (e.g. a ``GPU-...`` UUID) when it is not a number.
    """
    for var in env_vars:
        value = os.environ.get(var)
        if value is None or not value.strip():
            continue
        entries = [e.strip() for e in value.split(",") if e.strip()]
        if device_index >= len(entries):
            raise LookupError(f"device index {device_index} is not visible ({var}={value!r})")
        entry = entries[device_index]
        return int(entry) if entry.isdigit() else entry
    return device_index


@register_monitor("none")
class NoneMonitor(MemoryMonitor):
    """No device memory signal (CPU runs, or monitoring turned off)."""

    def _setup(self) -> None:
        return None

    def _read(self) -> MemoryReading:
        raise LookupError("the 'none' monitor has no readings")

    def read(self) -> MemoryReading | None:
        return None


@register_monitor("torch")
class TorchMonitor(MemoryMonitor):
    """``torch.cuda.mem_get_info``; works on CUDA and ROCm (HIP) builds of torch."""

    package = "torch"

    def _setup(self) -> None:
        torch: Any = _import("torch", "torch")
        if not torch.cuda.is_available():
            self.unavailable_reason = "torch.cuda.is_available() is False (CPU-only build or no GPU)"
            return
        count = torch.cuda.device_count()
        if self.device_index >= count:
            self.unavailable_reason = f"cuda:{self.device_index} does not exist ({count} device(s))"
            return
        self._torch = torch

    def _read(self) -> MemoryReading:
        free, total = self._torch.cuda.mem_get_info(self.device_index)
        return MemoryReading(used_bytes=int(total - free), total_bytes=int(total))


@register_monitor("nvml")
class NvmlMonitor(MemoryMonitor):
    """NVIDIA Management Library through ``pynvml`` (package ``nvidia-ml-py``)."""

    package = "nvidia-ml-py"

    def _setup(self) -> None:
        nvml: Any = _import("pynvml", self.package)
        target = _physical_index(self.device_index, ("CUDA_VISIBLE_DEVICES",))
        nvml.nvmlInit()
        try:
            if isinstance(target, int):
                self._handle = nvml.nvmlDeviceGetHandleByIndex(target)
            elif target.startswith("GPU-"):
                self._handle = nvml.nvmlDeviceGetHandleByUUID(target)
            else:
                raise LookupError(f"cannot map visible device {target!r} to an NVML device")
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self._nvml = nvml

    def _read(self) -> MemoryReading:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return MemoryReading(used_bytes=int(info.used), total_bytes=int(info.total))

    def _close(self) -> None:
        self._nvml.nvmlShutdown()


@register_monitor("rocm")
class RocmMonitor(MemoryMonitor):
    """AMD ROCm SMI through ``pyrsmi.rocml`` (package ``pyrsmi``)."""

    package = "pyrsmi"
    _VISIBLE_VARS = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")

    def _setup(self) -> None:
        _import("pyrsmi", self.package)
        rocml: Any = _import("pyrsmi.rocml", self.package)
        target = _physical_index(self.device_index, self._VISIBLE_VARS)
        if not isinstance(target, int):
            raise LookupError(f"cannot map visible device {target!r} to a ROCm SMI device")
        rocml.smi_initialize()
        try:
            count = int(rocml.smi_get_device_count())
            if target >= count:
                raise LookupError(f"ROCm device {target} does not exist ({count} device(s))")
        except BaseException:
            rocml.smi_shutdown()
            raise
        self._rocml = rocml
        self._target = target

    def _read(self) -> MemoryReading:
        used = int(self._rocml.smi_get_device_memory_used(self._target))
        total = int(self._rocml.smi_get_device_memory_total(self._target))
        return MemoryReading(used_bytes=used, total_bytes=total)

    def _close(self) -> None:
        self._rocml.smi_shutdown()


def get_monitor(name: str, device_index: int = 0) -> MemoryMonitor:
    """Build the monitor ``name`` for ``device_index``.

    Raises ``ValueError`` for an unknown name and ``MonitorUnavailableError`` (naming the
    missing package or device) when the monitor cannot work here.
    """
    monitor = _REGISTRY.lookup(name)(device_index)
    if not monitor.available():
        raise MonitorUnavailableError(
            f"memory monitor {name!r} is unavailable on device index {device_index}: "
            f"{monitor.unavailable_reason}"
        )
    return monitor


def _parse_device(device: Any) -> tuple[str, int]:
    """``"cuda:1"``, ``"cpu"``, ``torch.device`` or ``None`` -> (type, index)."""
    if device is None:
        return "cpu", 0
    kind = getattr(device, "type", None)
    if kind is not None:
        return str(kind), int(getattr(device, "index", None) or 0)
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if index and not index.isdigit():
        raise ValueError(f"bad device {device!r}: index {index!r} is not a number")
    return kind, int(index or 0)


def _is_hip_build() -> bool:
    try:
        import torch
    except Exception:
        return False
    return bool(getattr(torch.version, "hip", None))


def auto_monitor(device: Any = None) -> MemoryMonitor:
    """The first monitor that works for ``device``; never raises.

    CUDA device: ``nvml`` then ``torch``; ROCm build of torch (``torch.version.hip``): ``rocm``
    then ``torch``; anything else (CPU): ``none``. Falls back to ``none`` when every candidate
    is missing its library, its device, or fails to initialise.
    """
    try:
        kind, index = _parse_device(device)
    except Exception as exc:
        logger.warning("memory monitor: cannot parse device %r (%s); using 'none'", device, exc)
        kind, index = "cpu", 0
    candidates: tuple[str, ...] = ()
    if kind in ("cuda", "hip"):
        candidates = ("rocm", "torch") if _is_hip_build() else ("nvml", "torch")
    for name in candidates:
        try:
            monitor = _REGISTRY.lookup(name)(index)
        except Exception as exc:
            logger.debug("memory monitor %s failed to build: %s", name, exc)
            continue
        if monitor.available():
            return monitor
        logger.debug("memory monitor %s unavailable: %s", name, monitor.unavailable_reason)
        monitor.close()
    return NoneMonitor(index)
