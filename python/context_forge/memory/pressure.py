"""Memory-pressure modes and what the cache does in each.

``PressureController.update(pool_used_fraction)`` maps memory occupancy to a ``PressureMode``.
With the default thresholds ``(t0, t1, t2, t3) = (0.70, 0.85, 0.92, 0.96)``:

=========  ================  ===============================================================
mode       occupancy         meaning
=========  ================  ===============================================================
RELAXED    < t0              plenty of room
NORMAL     t0 .. t1          steady state
PRESSURE   t1 .. t2          evictions are near: back KV up early, prefetch less
CRITICAL   t2 .. t3          cache only agents expected soon, prefetch only due-now agents
EMERGENCY  >= t3             cache nothing new, no prefetch, free hard
=========  ================  ===============================================================

Two signals, the worse one wins:

1. **Device KV-pool occupancy** (primary), passed to ``update``. Serving engines preallocate the
   pool, so it is the only signal that moves as the cache fills. A radix cache keeps finished
   requests' pages until something needs them, so in steady state a pool is nearly 100 % held;
   callers that want the modes to describe *pressure* rather than *fullness* should count pages
   eviction can reclaim at once (unlocked cached pages) as free, and pass the fraction held by
   running requests and locked nodes.
2. **Device memory** from a ``MemoryMonitor`` (secondary, optional). SMI "used" includes the
   preallocated pool from the start, so its raw fraction would read as permanent pressure.
   The controller therefore measures *headroom consumed*: the first reading (taken on the first
   ``update``, i.e. after the engine allocated its pools; ``rebase()`` retakes it) is the
   baseline, and the signal is ``(used - baseline_used) / (total - baseline_used)`` — how much of
   the memory that was free then has been eaten since (activations, other processes).

Hysteresis: going up is immediate; going down from mode ``m`` needs the signal below
``thresholds[m-1] - hysteresis``, so occupancy hovering at a threshold does not flap.

Actions per mode (``actions(mode)``; ``L`` = ``load_ahead_step``, ``E`` = ``evict_pri_level``,
``h`` = hysteresis). Priorities are expected steps until an agent runs (lower = sooner,
``inf`` = not expected):

=========  ================  ===============  ==================  ==========================
mode       write_back_eager  admit_max_steps  prefetch_max_steps  evict_target_free_fraction
=========  ================  ===============  ==================  ==========================
RELAXED    False             inf              L                   0.0
NORMAL     False             inf              L                   0.0
PRESSURE   True              inf              min(1, L)           1 - t1 + h  (0.18)
CRITICAL   True              E                0                   1 - t1 + h  (0.18)
EMERGENCY  True              -1 (none)        -1 (none)           1 - t0 + h  (0.33)
=========  ================  ===============  ==================  ==========================

- ``write_back_eager``: back each inserted node up to host at insert time (write-through), so a
  later eviction is a plain free instead of a device->host copy on the critical path.
- ``admit_max_steps``: an insert is cached only if its agent's priority is ``<=`` this; from
  CRITICAL, nodes of agents not expected within ``E`` steps (including ``inf``) are not
  admitted; in EMERGENCY nothing is.
- ``prefetch_max_steps``: prefetch agents whose steps are ``<=`` this; ``0`` = only agents due
  now; ``-1`` = no prefetch.
- ``evict_target_free_fraction``: evict proactively (lowest-value first) until this fraction of
  the device pool is free; 0 = evict only on demand. From PRESSURE the target brings occupancy
  below the PRESSURE threshold by the hysteresis margin, so the mode can relax; EMERGENCY aims
  below the NORMAL threshold. There is no timer-based idle eviction: nothing is freed because
  time passed, only because memory is short.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from context_forge.memory.monitors import MemoryMonitor

__all__ = [
    "DEFAULT_HYSTERESIS",
    "DEFAULT_THRESHOLDS",
    "ModeActions",
    "PressureController",
    "PressureMode",
    "actions",
    "check_thresholds",
    "mode_name",
]

DEFAULT_THRESHOLDS: tuple[float, float, float, float] = (0.70, 0.85, 0.92, 0.96)
DEFAULT_HYSTERESIS = 0.03


class PressureMode(IntEnum):
    """Memory-pressure modes, ordered from least to most severe."""

    RELAXED = 0
    NORMAL = 1
    PRESSURE = 2
    CRITICAL = 3
    EMERGENCY = 4


def mode_name(mode: PressureMode | int) -> str:
    """Lower-case name of a mode (``"relaxed"`` ... ``"emergency"``), for logs and metrics."""
    return PressureMode(mode).name.lower()


def check_thresholds(thresholds: Sequence[float], hysteresis: float) -> tuple[float, ...]:
    """Validate pressure thresholds and hysteresis; return the thresholds as a tuple.

    Thresholds: exactly 4 strictly increasing fractions in (0, 1). Hysteresis: in
    ``[0, thresholds[0])`` (otherwise the controller could never return to RELAXED).
    Raises ``ValueError`` saying what is wrong.
    """
    values = tuple(thresholds)
    if len(values) != 4:
        raise ValueError(f"thresholds must have 4 values (NORMAL, PRESSURE, CRITICAL, EMERGENCY), got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ValueError(f"thresholds must be fractions in (0, 1), got {v!r} in {values!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"thresholds must be strictly increasing, got {values!r}")
    if isinstance(hysteresis, bool) or not isinstance(hysteresis, (int, float)):
        raise ValueError(f"hysteresis must be a number, got {hysteresis!r}")
    if not 0.0 <= hysteresis < values[0]:
        raise ValueError(f"hysteresis must be in [0, {values[0]}) (below the first threshold), got {hysteresis!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ModeActions:
    """What the cache and prefetcher do in one pressure mode (table in the module docstring)."""

    mode: PressureMode
    write_back_eager: bool
    admit_max_steps: float
    prefetch_max_steps: int
    evict_target_free_fraction: float

    def admits(self, priority: float) -> bool:
        """Whether a node whose agent's priority (expected steps) is ``priority`` may be cached."""
        return priority <= self.admit_max_steps

    def prefetches(self, steps: float) -> bool:
        """Whether an agent ``steps`` away should be prefetched."""
        return steps <= self.prefetch_max_steps

    def free_pages(self, capacity: int) -> int:
        """Pages of a ``capacity``-page pool this mode wants free."""
        return math.ceil(self.evict_target_free_fraction * capacity)


class PressureTarget(Protocol):
    """What a pressure mode acts on (the radix cache, the prefetcher): ``PressureController.step``
    hands every attached target the current mode's actions."""

    def apply_pressure(self, actions: ModeActions) -> None: ...


def actions(
    mode: PressureMode | int,
    *,
    load_ahead_step: int = 2,
    evict_pri_level: int = 4,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    hysteresis: float = DEFAULT_HYSTERESIS,
) -> ModeActions:
    """The ``ModeActions`` of ``mode`` (see the table in the module docstring)."""
    mode = PressureMode(mode)
    if load_ahead_step < 0 or evict_pri_level < 0:
        raise ValueError(
            f"load_ahead_step and evict_pri_level must be >= 0, got {load_ahead_step}, {evict_pri_level}"
        )
    t = check_thresholds(thresholds, hysteresis)
    relax_target = min(1.0, 1.0 - t[1] + hysteresis)
    if mode <= PressureMode.NORMAL:
        return ModeActions(mode, False, math.inf, load_ahead_step, 0.0)
    if mode == PressureMode.PRESSURE:
        return ModeActions(mode, True, math.inf, min(1, load_ahead_step), relax_target)
    if mode == PressureMode.CRITICAL:
        return ModeActions(mode, True, float(evict_pri_level), 0, relax_target)
    return ModeActions(mode, True, -1.0, -1, min(1.0, 1.0 - t[0] + hysteresis))


class PressureController:
    """Turns occupancy into a ``PressureMode`` with hysteresis (see the module docstring).

    ``monitor_interval_s`` rate-limits device reads: between reads the last device signal is
    reused (``update`` is meant to run every scheduler step; 0 reads every time).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        hysteresis: float = DEFAULT_HYSTERESIS,
        monitor: MemoryMonitor | None = None,
        *,
        load_ahead_step: int = 2,
        evict_pri_level: int = 4,
        monitor_interval_s: float = 0.25,
    ) -> None:
        self.thresholds = check_thresholds(thresholds, hysteresis)
        self.hysteresis = float(hysteresis)
        if monitor_interval_s < 0:
            raise ValueError(f"monitor_interval_s must be >= 0, got {monitor_interval_s!r}")
        self.monitor = monitor
        self.monitor_interval_s = float(monitor_interval_s)
        self._actions = {
            m: actions(
                m,
                load_ahead_step=load_ahead_step,
                evict_pri_level=evict_pri_level,
                thresholds=self.thresholds,
                hysteresis=self.hysteresis,
            )
            for m in PressureMode
        }
        self.mode = PressureMode.RELAXED
        self.pool_fraction = 0.0
        self.device_fraction: float | None = None
        self._baseline_used: int | None = None
        self._last_read = -math.inf
        self._targets: list[PressureTarget] = []

    def attach(self, target: PressureTarget) -> None:
        """Have ``step`` apply each mode's actions to ``target`` (targets act in attach order)."""
        self._targets.append(target)

    def step(self, pool_used_fraction: float) -> PressureMode:
        """``update`` with ``pool_used_fraction``, then apply the mode's actions to every attached
        target; returns the mode."""
        mode = self.update(pool_used_fraction)
        acts = self._actions[mode]
        for target in self._targets:
            target.apply_pressure(acts)
        return mode

    def raw_mode(self, fraction: float) -> PressureMode:
        """The mode of ``fraction`` without hysteresis: how many thresholds it reaches."""
        return PressureMode(sum(1 for t in self.thresholds if fraction >= t))

    def rebase(self) -> None:
        """Forget the device-memory baseline; the next device reading becomes the new one."""
        self._baseline_used = None
        self._last_read = -math.inf

    def _device_signal(self) -> float | None:
        if self.monitor is None:
            return None
        now = time.monotonic()
        if now - self._last_read < self.monitor_interval_s:
            return self.device_fraction
        self._last_read = now
        reading = self.monitor.read()
        if reading is None:
            self.device_fraction = None
            return None
        if self._baseline_used is None:
            self._baseline_used = reading.used_bytes
        headroom = reading.total_bytes - self._baseline_used
        if headroom <= 0:
            self.device_fraction = 1.0 if reading.used_bytes >= reading.total_bytes else 0.0
        else:
            consumed = (reading.used_bytes - self._baseline_used) / headroom
            self.device_fraction = min(1.0, max(0.0, consumed))
        return self.device_fraction

    def update(self, pool_used_fraction: float) -> PressureMode:
        """Feed the device KV-pool occupancy in [0, 1]; return the (possibly changed) mode."""
        if (
            isinstance(pool_used_fraction, bool)
            or not isinstance(pool_used_fraction, (int, float))
            or not 0.0 <= pool_used_fraction <= 1.0
        ):
            raise ValueError(f"pool_used_fraction must be a number in [0, 1], got {pool_used_fraction!r}")
        self.pool_fraction = float(pool_used_fraction)
        signal = self.pool_fraction
        device = self._device_signal()
        if device is not None:
            signal = max(signal, device)
        target = self.raw_mode(signal)
        if target > self.mode:
            self.mode = target
        else:
            while self.mode > PressureMode.RELAXED and signal < self.thresholds[self.mode - 1] - self.hysteresis:
                self.mode = PressureMode(self.mode - 1)
        return self.mode

    def actions(self, mode: PressureMode | int | None = None) -> ModeActions:
        """Actions of ``mode`` (default: the current mode) under this controller's settings."""
        return self._actions[self.mode if mode is None else PressureMode(mode)]
