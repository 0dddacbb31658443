"""Memory monitors: registry, clean fallback, and the NVML / ROCm paths.

This machine has no GPU, no NVIDIA or AMD driver and neither ``nvidia-ml-py`` nor ``pyrsmi``.
The NVML and ROCm paths are therefore exercised with *fake* ``pynvml`` and ``pyrsmi.rocml``
modules injected into ``sys.modules`` (they imitate only the functions the monitors call).
Missing libraries are simulated with ``sys.modules[name] = None``, which makes ``import`` fail.
"""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from context_forge.memory.monitors import (
    MemoryReading,
    MonitorUnavailableError,
    auto_monitor,
    get_monitor,
    monitor_names,
)

GiB = 1 << 30


def make_fake_pynvml(used: int = 30 * GiB, total: int = 80 * GiB, devices: int = 8, init_error: bool = False):
    """A fake ``pynvml`` (no NVIDIA GPU or library here); records calls in ``mod.calls``."""
    mod = types.ModuleType("pynvml")
    mod.calls = []

    def nvmlInit() -> None:
        mod.calls.append("init")
        if init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown() -> None:
        mod.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(index: int):
        mod.calls.append(("index", index))
        if index >= devices:
            raise RuntimeError("Invalid Argument")
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(uuid: str):
        mod.calls.append(("uuid", uuid))
        return ("handle", uuid)

    def nvmlDeviceGetMemoryInfo(handle):
        mod.calls.append(("meminfo", handle))
        if mod.fail_reads:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(total=total, used=used, free=total - used)

    mod.fail_reads = False
    mod.nvmlInit = nvmlInit
    mod.nvmlShutdown = nvmlShutdown
    mod.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex
    mod.nvmlDeviceGetHandleByUUID = nvmlDeviceGetHandleByUUID
    mod.nvmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo
    return mod


def make_fake_rocml(used: int = 100 * GiB, total: int = 192 * GiB, devices: int = 8, init_error: bool = False):
    """A fake ``pyrsmi.rocml`` (no AMD GPU or ROCm library here); records calls in ``mod.calls``."""
    mod = types.ModuleType("pyrsmi.rocml")
    mod.calls = []

    def smi_initialize() -> None:
        mod.calls.append("init")
        if init_error:
            raise RuntimeError("ROCm SMI init failed")

    def smi_shutdown() -> None:
        mod.calls.append("shutdown")

    mod.smi_initialize = smi_initialize
    mod.smi_shutdown = smi_shutdown
    mod.smi_get_device_count = lambda: devices
    mod.smi_get_device_memory_used = lambda i: (mod.calls.append(("used", i)), used)[1]
    mod.smi_get_device_memory_total = lambda i: (mod.calls.append(("total", i)), total)[1]
    return mod


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)


def install_nvml(monkeypatch: pytest.MonkeyPatch, **kw) -> types.ModuleType:
    fake = make_fake_pynvml(**kw)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def install_rocml(monkeypatch: pytest.MonkeyPatch, **kw) -> types.ModuleType:
    fake = make_fake_rocml(**kw)
    package = types.ModuleType("pyrsmi")
    package.rocml = fake
    monkeypatch.setitem(sys.modules, "pyrsmi", package)
    monkeypatch.setitem(sys.modules, "pyrsmi.rocml", fake)
    return fake


def test_registry_names() -> None:
    assert set(monitor_names()) == {"none", "torch", "nvml", "rocm"}


def test_unknown_name_is_named() -> None:
    with pytest.raises(ValueError, match="'nvlm'.*nvml"):
        get_monitor("nvlm")


def test_none_monitor_reads_nothing() -> None:
    monitor = get_monitor("none")
    assert monitor.available() and monitor.read() is None
    monitor.close()


def test_reading_fraction() -> None:
    assert MemoryReading(used_bytes=20, total_bytes=80).used_fraction == 0.25
    assert MemoryReading(used_bytes=1, total_bytes=0).used_fraction == 1.0


@pytest.mark.parametrize(("module", "package", "name"), [("pynvml", "nvidia-ml-py", "nvml"), ("pyrsmi", "pyrsmi", "rocm")])
def test_missing_library_explicit_choice_names_package(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str, name: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MonitorUnavailableError, match=package):
        get_monitor(name)


def test_torch_monitor_unavailable_without_gpu() -> None:
    assert not torch.cuda.is_available()
    with pytest.raises(MonitorUnavailableError, match="torch.cuda.is_available"):
        get_monitor("torch")


def test_auto_on_cpu_is_none() -> None:
    assert auto_monitor("cpu").name == "none"
    assert auto_monitor(None).name == "none"
    assert auto_monitor(torch.device("cpu")).name == "none"


def test_auto_cuda_without_libraries_falls_back_to_none(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert auto_monitor("cuda:0").name == "none"


def test_auto_never_raises_without_torch(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert auto_monitor("cuda").name == "none"
    assert auto_monitor("cuda:x").name == "none"


def test_nvml_reads_and_closes_once(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    fake = install_nvml(monkeypatch, used=30 * GiB, total=80 * GiB)
    monitor = get_monitor("nvml", device_index=2)
    assert monitor.read() == MemoryReading(30 * GiB, 80 * GiB)
    assert ("index", 2) in fake.calls
    monitor.close()
    monitor.close()
    assert fake.calls.count("shutdown") == 1
    assert monitor.read() is None and not monitor.available()


def test_nvml_read_failure_returns_none(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    fake = install_nvml(monkeypatch)
    monitor = get_monitor("nvml")
    fake.fail_reads = True
    assert monitor.read() is None
    fake.fail_reads = False
    assert monitor.read() is not None


def test_nvml_maps_visible_devices(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    fake = install_nvml(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    get_monitor("nvml", device_index=1)
    assert ("index", 5) in fake.calls
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    get_monitor("nvml", device_index=0)
    assert ("uuid", "GPU-abc") in fake.calls
    with pytest.raises(MonitorUnavailableError, match="not visible"):
        get_monitor("nvml", device_index=1)


def test_nvml_missing_device(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    fake = install_nvml(monkeypatch, devices=1)
    with pytest.raises(MonitorUnavailableError, match="Invalid Argument"):
        get_monitor("nvml", device_index=3)
    assert fake.calls.count("init") == fake.calls.count("shutdown")


def test_auto_cuda_prefers_nvml(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    install_nvml(monkeypatch)
    monitor = auto_monitor("cuda:1")
    assert monitor.name == "nvml" and monitor.device_index == 1


def test_auto_cuda_nvml_init_failure_falls_back(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    install_nvml(monkeypatch, init_error=True)
    assert auto_monitor("cuda").name == "none"


def test_rocm_reads(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    fake = install_rocml(monkeypatch, used=100 * GiB, total=192 * GiB)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "4,6")
    monitor = get_monitor("rocm", device_index=1)
    assert monitor.read() == MemoryReading(100 * GiB, 192 * GiB)
    assert ("used", 6) in fake.calls and ("total", 6) in fake.calls
    monitor.close()
    assert fake.calls.count("shutdown") == 1


def test_rocm_missing_device(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    fake = install_rocml(monkeypatch, devices=2)
    with pytest.raises(MonitorUnavailableError, match="ROCm device 5 does not exist"):
        get_monitor("rocm", device_index=5)
    assert fake.calls.count("init") == fake.calls.count("shutdown") == 1


def test_auto_on_rocm_build_prefers_rocm(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    install_rocml(monkeypatch)
    install_nvml(monkeypatch)
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    assert auto_monitor("cuda:0").name == "rocm"


def test_auto_on_rocm_build_init_failure_falls_back(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    install_rocml(monkeypatch, init_error=True)
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    assert auto_monitor("cuda:0").name == "none"


def test_auto_on_rocm_build_without_pyrsmi(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setitem(sys.modules, "pyrsmi", None)
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    assert auto_monitor("cuda:0").name == "none"


def test_bad_device_index() -> None:
    with pytest.raises(ValueError, match="device_index"):
        get_monitor("none", device_index=-1)
