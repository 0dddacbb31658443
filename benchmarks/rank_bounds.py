"""How much of the gap to Belady is information an online policy does not have?

    python benchmarks/rank_bounds.py [--sweep benchmarks/results/rank_sweep.json] [--out DIR]

Writes ``rank_bounds.{md,json}`` under ``--out`` (default ``benchmarks/results``).

For every device-tier cell of the committed rank sweep where the judged policy (``kvflow`` on
declared shapes, ``pbkv`` on undeclared ones) misses its target, this replays the same trace at the
same capacity (device tier only, as in the sweep) with the judged policy *told the future up to a
horizon*: a node whose next use is within ``H`` seconds of the replay's present is kept ahead of
every other node, farthest next use evicted first among those, and every other node is ranked by
the policy as usual. Time is the oracle's ideal clock (``sim/oracle.py``: each request's send time
with nothing cached and nothing else running), its present the latest ideal time of any request
admitted so far (``BeladyOracle.frontier``). ``H = 0`` tells it only what is already late.

Belady is the same replay told everything. If the judged policy needs several rounds, or several
of a ticket's calls, of exact future to reach its target, then the target asks for knowledge the
trace does not give a policy that runs online: which agents a round will draw, where a ticket
goes next. The table gives the horizons in the case's own time units too: the median ideal time
between consecutive workflow starts (a round, a ticket arrival) and between consecutive requests
of one workflow. Column ``live``: the judged policy told, at any distance, the exact next uses by
workflows already running and nothing about the others (the most a model of the live instances
could give).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_sweep import PAGE_SIZE, build_trace, machine_info  # noqa: E402
from rank_sweep import DECLARED_MIN, UNDECLARED_MIN, cases, device_capacity  # noqa: E402

from context_forge.cache.node import RadixNode  # noqa: E402
from context_forge.cache.policy import available_policies, policy_class, register_policy  # noqa: E402
from context_forge.sim.simulator import SimConfig, Simulator, simulate  # noqa: E402
from context_forge.trace.records import Trace  # noqa: E402

HORIZONS_S = (0.0, 1.0, 2.0, 4.0, 8.0)


def _told_policy(name: str, base: str, told: Callable[[Any, RadixNode], float | None]) -> str:
    """Register (once) ``name``: ``base`` with the nodes for which ``told(policy, node)`` gives a
    next-use time kept ahead of every other node, farthest next use first among them; the rest
    ranked by ``base`` as usual. Offline only (it reads the next-use oracle); ``told`` may keep
    per-replay state in the policy's ``memo``."""
    if name in available_policies():
        return name
    parent = policy_class(base)

    class Told(parent):  # type: ignore[valid-type, misc]
        needs_oracle = True
        serving = False

        def __init__(self, oracle: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.oracle = oracle
            self.memo: set[int] = set()

        def key(self, node: RadixNode) -> tuple:
            t = told(self, node)
            return (0, super().key(node)) if t is None else (1, -t)

    Told.__name__ = Told.__qualname__ = f"{parent.__name__}Told"
    register_policy(name)(Told)
    return name


def lookahead_policy(base: str, horizon_s: float) -> str:
    """``base`` told the future up to ``horizon_s`` seconds past the replay's present."""
    def told(policy: Any, node: RadixNode) -> float | None:
        t = policy.oracle(node)
        return t if t <= policy.oracle.frontier + horizon_s else None

    return _told_policy(f"{base}+ahead{horizon_s:g}s", base, told)


LIVE_GROUPS: list[list[int]] = []
"""Per request index of the trace being replayed, the indices of its workflow's requests
(`live_policy`; set by `bound_cell` before each replay)."""


def live_policy(base: str) -> str:
    """``base`` told the exact next uses of *live* workflows only (those with a request admitted
    already), at any distance: what a perfect model of the running instances, and of nothing else,
    would know."""
    def told(policy: Any, node: RadixNode) -> float | None:
        idx = policy.oracle.next_request(node)
        if idx is None:
            return None
        group = LIVE_GROUPS[idx]
        if group[0] not in policy.memo:
            if not any(policy.oracle.is_started(j) for j in group):
                return None
            policy.memo.add(group[0])
        return policy.oracle.times[idx]

    return _told_policy(f"{base}+live", base, told)


def _groups(trace: Trace) -> list[list[int]]:
    by_wf: dict[str, list[int]] = {}
    for i, r in enumerate(trace.requests):
        by_wf.setdefault(r.workflow_id, []).append(i)
    return [by_wf[r.workflow_id] for r in trace.requests]


def time_units(trace: Trace) -> dict[str, float]:
    """Median ideal gaps: between consecutive workflow starts, and between one workflow's requests."""
    sim = Simulator(trace, SimConfig(policy="belady", device_tokens=PAGE_SIZE * 1024, host_tokens=0,
                                     page_size=PAGE_SIZE))
    assert sim.oracle is not None
    per_wf: dict[str, list[float]] = {}
    for r, t in zip(sim.reqs, sim.oracle.times):
        per_wf.setdefault(r.workflow_id, []).append(t)
    starts = sorted(min(ts) for ts in per_wf.values())
    within = [b - a for ts in per_wf.values() for a, b in zip(sorted(ts), sorted(ts)[1:])]
    return {"workflow_start_gap_s": statistics.median([b - a for a, b in zip(starts, starts[1:])] or [0.0]),
            "request_gap_s": statistics.median(within or [0.0])}


def short_cells(sweep: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], str, float]]:
    """``(row, cell, judged policy, target)`` for every device-tier cell below its target."""
    out = []
    for row in sweep["rows"]:
        judged, need = ("kvflow", DECLARED_MIN) if row["declared"] else ("pbkv", UNDECLARED_MIN)
        for cell in row["cells"]:
            h = cell["hits"]
            if h["belady"] and h[judged] / h["belady"] < need:
                out.append((row, cell, judged, need))
    return out


def bound_cell(row: dict[str, Any], cell: dict[str, Any], judged: str) -> dict[str, Any]:
    case = next(c for c in cases(None) if c[1] == row["label"])
    trace = build_trace(case[2], case[3])
    dev = device_capacity(trace, cell["fraction"])
    assert dev == cell["device_tokens"], "the sweep's capacity rule changed since it was run"

    def hits(policy: str) -> int:
        return simulate(trace, SimConfig(policy=policy, device_tokens=dev, host_tokens=0, page_size=PAGE_SIZE,
                                         load_ahead_step=0)).device_hit_tokens

    belady = hits("belady")
    out = {"label": row["label"], "fraction": cell["fraction"], "judged": judged, "device_tokens": dev,
           "belady": belady, "judged_hits": hits(judged), **time_units(trace), "ahead": {}}
    for h in HORIZONS_S:
        out["ahead"][f"{h:g}"] = hits(lookahead_policy(judged, h))
    LIVE_GROUPS[:] = _groups(trace)
    out["live"] = hits(live_policy(judged))
    print(f"{row['label']:24s} {cell['fraction']:.0%} done", file=sys.stderr, flush=True)
    return out


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    head = " | ".join(f"+{h:g} s" for h in HORIZONS_S)
    out = ["# Rank bounds: the shortfall cells with the future told up to a horizon\n",
           f"`{meta['command']}` on {meta['machine']['platform']} ({meta['machine']['cpu_count']} CPUs), commit "
           f"`{meta['machine'].get('commit', '?')}`, {meta['wall_s']:.0f} s, cells from `{meta['sweep']}` (commit "
           f"`{meta['sweep_commit']}`). Method: the module docstring of `benchmarks/rank_bounds.py`. Device hits "
           "as a fraction of Belady's, device tier only. Round / call: median ideal seconds between "
           "workflow starts / between one workflow's requests.\n",
           f"| case | cap | policy | target | online | {head} | live | round s | call s |",
           "|---|---|---|---|---|" + "---|" * len(HORIZONS_S) + "---|---|---|"]
    for r in rows:
        b = r["belady"] or 1
        target = DECLARED_MIN if r["judged"] == "kvflow" else UNDECLARED_MIN
        ahead = " | ".join(f"{r['ahead'][f'{h:g}'] / b:.3f}" for h in HORIZONS_S)
        out.append(f"| {r['label']} | {r['fraction']:.0%} | {r['judged']} | {target} | {r['judged_hits'] / b:.3f} | "
                   f"{ahead} | {r['live'] / b:.3f} | {r['workflow_start_gap_s']:.2f} | {r['request_gap_s']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results = Path(__file__).resolve().parent / "results"
    ap.add_argument("--sweep", default=str(results / "rank_sweep.json"))
    ap.add_argument("--out", default=str(results))
    args = ap.parse_args(argv)
    command = "python benchmarks/rank_bounds.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    sweep = json.loads(Path(args.sweep).read_text())
    rows = [bound_cell(row, cell, judged) for row, cell, judged, _ in short_cells(sweep)]
    meta = {"command": command.strip(), "machine": machine_info(sys.argv), "wall_s": time.perf_counter() - t0,
            "sweep": Path(args.sweep).name, "sweep_commit": sweep["meta"]["machine"].get("commit", "?")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank_bounds.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "rank_bounds.md").write_text(render(meta, rows))
    print(render(meta, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
