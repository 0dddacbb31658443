"""`benchmarks/rank_bounds.py`: the policies told the future up to a horizon, and which sweep cells
it bounds. Real simulator replays of small generated traces."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from policy_sweep import PAGE_SIZE, build_trace  # noqa: E402
from rank_bounds import LIVE_GROUPS, _groups, live_policy, lookahead_policy, render, short_cells, time_units  # noqa: E402
from rank_sweep import device_capacity  # noqa: E402

from context_forge.cache.policy import policy_class  # noqa: E402
from context_forge.sim.simulator import SimConfig, simulate  # noqa: E402


def _hits(trace, policy: str, dev: int) -> int:
    return simulate(trace, SimConfig(policy=policy, device_tokens=dev, host_tokens=0, page_size=PAGE_SIZE,
                                     load_ahead_step=0)).device_hit_tokens


def test_an_unbounded_horizon_is_belady_and_a_short_one_helps() -> None:
    trace = build_trace("rounds", {"agents": 40, "active": 8, "rounds": 8, "seed": 3})
    dev = device_capacity(trace, 0.2)
    online, belady = _hits(trace, "kvflow", dev), _hits(trace, "belady", dev)
    assert online < belady, "the case must leave a gap to bound"
    assert _hits(trace, lookahead_policy("kvflow", 1e9), dev) == belady
    assert _hits(trace, lookahead_policy("kvflow", 2.0), dev) > online


def test_knowing_the_live_workflows_futures_lies_between_online_and_belady() -> None:
    trace = build_trace("rounds", {"agents": 40, "active": 8, "rounds": 8, "seed": 3})
    dev = device_capacity(trace, 0.2)
    LIVE_GROUPS[:] = _groups(trace)
    live = _hits(trace, live_policy("kvflow"), dev)
    assert _hits(trace, "kvflow", dev) <= live <= _hits(trace, "belady", dev)


def test_lookahead_policies_register_once_and_are_offline_only() -> None:
    name = lookahead_policy("pbkv", 1.0)
    assert lookahead_policy("pbkv", 1.0) == name == "pbkv+ahead1s"
    cls = policy_class(name)
    assert cls.needs_oracle and not cls.serving
    assert cls.priority == policy_class("pbkv").priority


def test_short_cells_are_the_ones_below_their_target() -> None:
    sweep = {"rows": [
        {"label": "a", "declared": True, "cells": [
            {"fraction": 0.2, "hits": {"kvflow": 91, "pbkv": 99, "belady": 100}},
            {"fraction": 0.4, "hits": {"kvflow": 92, "pbkv": 10, "belady": 100}}]},
        {"label": "b", "declared": False, "cells": [
            {"fraction": 0.2, "hits": {"kvflow": 99, "pbkv": 89, "belady": 100}},
            {"fraction": 0.4, "hits": {"kvflow": 0, "pbkv": 0, "belady": 0}}]}]}
    got = [(r["label"], c["fraction"], judged) for r, c, judged, _ in short_cells(sweep)]
    assert got == [("a", 0.2, "kvflow"), ("b", 0.2, "pbkv")]


def test_time_units_and_render() -> None:
    trace = build_trace("rounds", {"agents": 40, "active": 8, "rounds": 8, "seed": 3})
    units = time_units(trace)
    assert units["workflow_start_gap_s"] > 0 and math.isfinite(units["request_gap_s"])
    row = {"label": "r", "fraction": 0.2, "judged": "kvflow", "belady": 200, "judged_hits": 150,
           "ahead": {"0": 150, "1": 160, "2": 180, "4": 190, "8": 200}, "live": 170, **units}
    meta = {"command": "c", "machine": {"platform": "p", "cpu_count": 2, "commit": "x"}, "wall_s": 1.0,
            "sweep": "s.json", "sweep_commit": "y"}
    line = render(meta, [row]).splitlines()[-1]
    assert line.startswith("| r | 20% | kvflow | 0.92 | 0.750 | 0.750 | 0.800 | 0.900 | 0.950 | 1.000 | 0.850 |")
