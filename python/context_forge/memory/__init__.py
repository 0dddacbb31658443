"""Device-memory monitors and the memory-pressure controller."""
from context_forge.memory.monitors import (
    MemoryMonitor,
    MemoryReading,
    MonitorUnavailableError,
    auto_monitor,
    get_monitor,
    monitor_names,
    register_monitor,
)
from context_forge.memory.pressure import ModeActions, PressureController, PressureMode, actions, mode_name

__all__ = [
    "MemoryMonitor",
    "MemoryReading",
    "ModeActions",
    "MonitorUnavailableError",
    "PressureController",
    "PressureMode",
    "actions",
    "auto_monitor",
    "get_monitor",
    "mode_name",
    "monitor_names",
    "register_monitor",
]
