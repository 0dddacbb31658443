"""Pressure modes: thresholds, hysteresis, the worse-of-two signals, and per-mode actions.

The device-memory signal comes from ``ScriptedMonitor``, a fake ``MemoryMonitor`` that returns
readings from a list: this machine has no GPU to read memory from.
"""
from __future__ import annotations

import math

import pytest
from context_forge.memory.monitors import MemoryMonitor, MemoryReading
from context_forge.memory.pressure import (
    PressureController,
    PressureMode,
    actions,
    check_thresholds,
    mode_name,
)
from hypothesis import given, settings
from hypothesis import strategies as st

R, N, P, C, E = (
    PressureMode.RELAXED,
    PressureMode.NORMAL,
    PressureMode.PRESSURE,
    PressureMode.CRITICAL,
    PressureMode.EMERGENCY,
)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


class ScriptedMonitor(MemoryMonitor):
    """Fake monitor (no GPU here): each ``read()`` returns the next scripted reading."""

    name = "scripted"

    def __init__(self, readings: list[MemoryReading | None]) -> None:
        self.readings = list(readings)
        super().__init__(0)

    def _setup(self) -> None:
        return None

    def _read(self) -> MemoryReading:
        reading = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        if reading is None:
            raise RuntimeError("read failed")
        return reading


def test_mode_order_and_names() -> None:
    assert R < N < P < C < E
    assert [mode_name(m) for m in PressureMode] == ["relaxed", "normal", "pressure", "critical", "emergency"]


@pytest.mark.parametrize(
    ("fraction", "mode"),
    [(0.0, R), (0.69, R), (0.70, N), (0.849, N), (0.85, P), (0.91, P), (0.92, C), (0.959, C), (0.96, E), (1.0, E)],
)
def test_thresholds_from_fresh_controller(fraction: float, mode: PressureMode) -> None:
    assert PressureController().update(fraction) == mode


def test_up_is_immediate_down_needs_hysteresis() -> None:
    ctl = PressureController()
    assert ctl.update(0.93) == C
    assert ctl.update(0.91) == C  # below 0.92 but not below 0.92 - 0.03
    assert ctl.update(0.895) == C
    assert ctl.update(0.889) == P
    assert ctl.update(0.5) == R  # several levels at once
    assert ctl.update(0.97) == E


def test_no_flapping_around_a_threshold() -> None:
    ctl = PressureController()
    modes = [ctl.update(0.85 + d) for d in (0.001, -0.01, 0.005, -0.02, 0.0, -0.029)]
    assert modes == [P] * 6
    assert ctl.update(0.819) == N


def test_zero_hysteresis_follows_thresholds() -> None:
    ctl = PressureController(hysteresis=0.0)
    assert ctl.update(0.86) == P
    assert ctl.update(0.849) == N


@settings(max_examples=200, deadline=None)
@given(a=fractions, b=fractions)
def test_monotone_from_fresh_controller(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert PressureController().update(lo) <= PressureController().update(hi)


@settings(max_examples=200, deadline=None)
@given(seq=st.lists(fractions, min_size=1, max_size=30))
def test_mode_bounded_by_hysteresis_band(seq: list[float]) -> None:
    ctl = PressureController()
    for f in seq:
        mode = ctl.update(f)
        assert ctl.raw_mode(f) <= mode <= ctl.raw_mode(min(1.0, f + ctl.hysteresis))


def test_worse_of_pool_and_device_signal() -> None:
    gib = 1 << 30
    monitor = ScriptedMonitor(
        [
            MemoryReading(70 * gib, 80 * gib),  # baseline: pool preallocated, 10 GiB free
            MemoryReading(70 * gib, 80 * gib),  # nothing consumed: pool signal decides
            MemoryReading(79 * gib + gib // 2, 80 * gib),  # 95 % of the headroom eaten
            None,  # read failure: device signal ignored
        ]
    )
    ctl = PressureController(monitor=monitor, monitor_interval_s=0.0)
    assert ctl.update(0.1) == R
    assert ctl.update(0.75) == N
    assert ctl.device_fraction == 0.0
    assert ctl.update(0.1) == C
    assert ctl.device_fraction == pytest.approx(0.95)
    assert ctl.update(0.1) == R
    assert ctl.device_fraction is None


def test_rebase_retakes_baseline() -> None:
    monitor = ScriptedMonitor([MemoryReading(10, 100), MemoryReading(74, 100), MemoryReading(74, 100)])
    ctl = PressureController(monitor=monitor, monitor_interval_s=0.0)
    ctl.update(0.0)
    assert ctl.update(0.0) == N  # (74 - 10) / (100 - 10) = 0.71
    ctl.rebase()
    assert ctl.update(0.0) == R
    assert ctl.device_fraction == 0.0


def test_monitor_reads_are_rate_limited() -> None:
    monitor = ScriptedMonitor([MemoryReading(0, 100), MemoryReading(99, 100)])
    ctl = PressureController(monitor=monitor, monitor_interval_s=3600.0)
    ctl.update(0.0)
    assert ctl.update(0.0) == R
    assert len(monitor.readings) == 1


def test_actions_table() -> None:
    ctl = PressureController(load_ahead_step=3, evict_pri_level=5)
    relaxed, normal, pressure, critical, emergency = (ctl.actions(m) for m in PressureMode)
    assert not relaxed.write_back_eager and not normal.write_back_eager
    assert pressure.write_back_eager and critical.write_back_eager and emergency.write_back_eager
    assert [a.prefetch_max_steps for a in (relaxed, normal, pressure, critical, emergency)] == [3, 3, 1, 0, -1]
    assert relaxed.admits(math.inf) and pressure.admits(math.inf)
    assert critical.admits(5) and not critical.admits(6) and not critical.admits(math.inf)
    assert not emergency.admits(0)
    assert critical.prefetches(0) and not critical.prefetches(1) and not emergency.prefetches(0)
    assert relaxed.evict_target_free_fraction == normal.evict_target_free_fraction == 0.0
    assert pressure.evict_target_free_fraction == pytest.approx(1 - 0.85 + 0.03)
    assert emergency.evict_target_free_fraction == pytest.approx(1 - 0.70 + 0.03)
    assert ctl.actions() == relaxed
    ctl.update(0.99)
    assert ctl.actions() == emergency


def test_actions_with_small_load_ahead() -> None:
    assert actions(PressureMode.PRESSURE, load_ahead_step=0).prefetch_max_steps == 0


@settings(max_examples=100, deadline=None)
@given(load_ahead=st.integers(0, 8), evict_level=st.integers(0, 8))
def test_actions_never_loosen_with_severity(load_ahead: int, evict_level: int) -> None:
    table = [actions(m, load_ahead_step=load_ahead, evict_pri_level=evict_level) for m in PressureMode]
    for lower, higher in zip(table, table[1:]):
        assert higher.write_back_eager >= lower.write_back_eager
        assert higher.admit_max_steps <= lower.admit_max_steps
        assert higher.prefetch_max_steps <= lower.prefetch_max_steps
        assert higher.evict_target_free_fraction >= lower.evict_target_free_fraction


@pytest.mark.parametrize(
    ("thresholds", "hysteresis", "message"),
    [
        ((0.7, 0.85, 0.92), 0.03, "4 values"),
        ((0.7, 0.85, 0.85, 0.96), 0.03, "strictly increasing"),
        ((0.0, 0.85, 0.92, 0.96), 0.0, r"in \(0, 1\)"),
        ((0.7, 0.85, 0.92, 1.0), 0.03, r"in \(0, 1\)"),
        ((0.7, 0.85, 0.92, 0.96), 0.7, "hysteresis"),
        ((0.7, 0.85, 0.92, 0.96), -0.1, "hysteresis"),
    ],
)
def test_bad_thresholds(thresholds: tuple[float, ...], hysteresis: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_thresholds(thresholds, hysteresis)
    with pytest.raises(ValueError, match=message):
        PressureController(thresholds, hysteresis)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), "0.5", True])
def test_bad_fraction(bad: object) -> None:
    with pytest.raises(ValueError, match="pool_used_fraction"):
        PressureController().update(bad)  # type: ignore[arg-type]


class _Recorder:
    """A second ``PressureTarget``: records what it was handed and when (after the cache)."""

    def __init__(self, cache: object) -> None:
        self.cache = cache
        self.seen: list[tuple[PressureMode, int]] = []

    def apply_pressure(self, actions) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((actions.mode, self.cache.device_pool.num_free))  # type: ignore[attr-defined]


def test_step_applies_the_mode_to_every_attached_target_in_order() -> None:
    from context_forge.cache import CountingTransfer, PagePool, RadixCache, get_policy

    cache = RadixCache(1, PagePool(20, "device"), PagePool(40, "host"), get_policy("lru"), CountingTransfer(),
                       "write_back")
    for i in range(20):  # fill the device pool with unlocked cached prefixes
        pages = cache.alloc_device(1)
        assert pages is not None
        result = cache.insert([1000 + i], pages)
        cache.device_pool.free([p for p in pages if p not in result.pages])
    assert cache.device_pool.num_free == 0
    controller = PressureController(load_ahead_step=2)
    recorder = _Recorder(cache)
    controller.attach(cache)
    controller.attach(recorder)

    assert controller.step(0.10) == PressureMode.RELAXED
    assert not cache.eager_write_back and cache.admission_limit == math.inf
    assert cache.device_pool.num_free == 0, "relaxed: nothing evicted"

    mode = controller.step(0.97)
    acts = controller.actions()
    assert mode == PressureMode.EMERGENCY and acts.evict_target_free_fraction > 0
    assert cache.eager_write_back == acts.write_back_eager
    assert cache.admission_limit == acts.admit_max_steps
    want = acts.free_pages(20)
    assert cache.device_pool.num_free >= want > 0, "the cache evicted down to the mode's free target"
    assert recorder.seen == [(PressureMode.RELAXED, 0), (mode, cache.device_pool.num_free)], \
        "targets act in attach order: the recorder saw the pages the cache had freed"
    cache.check()
