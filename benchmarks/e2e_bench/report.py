"""Turns ``e2e_results.json`` into ``e2e_results.md`` (tables, targets) and ``e2e_results.png``.

Everything here reads the results dictionary only, so ``--plot-only DIR`` rebuilds both files on
a machine that never ran the sweep. For a cell, ``makespan(run)`` is the run's replay of the cell
(``unbounded``: of the cell's trace, shared by its pool fractions);

- speedup of P over B: ``makespan(B) / makespan(P)``;
- ceiling over B: ``makespan(B) / makespan(unbounded)``, the most any policy can gain over B;
- captured fraction of P over B: ``(makespan(B) - makespan(P)) / (makespan(B) - makespan(unbounded))``
  (B is lru unless said otherwise; undefined when B is within 1 % of the ceiling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNBOUNDED = "unbounded"
BASELINE = "lru"
NO_HEADROOM = 0.01
"""Below this share of the baseline's makespan there is no gap to capture."""


@dataclass(frozen=True)
class Target:
    role: int
    """Index into ``results["targets"]``: 0 single workflow, 1 concurrent, 2 dynamic."""
    policy: str
    baseline: str
    goal: float
    what: str


TARGETS = (
    Target(0, "kvflow", "lru", 1.83, "single PEER workflow, large prompts: kvflow + prefetch over lru"),
    Target(1, "kvflow", "lru", 2.19, "16 concurrent workflows: kvflow + prefetch over lru"),
    Target(2, "pbkv", "kvflow", 1.26, "dynamic workflows: pbkv + prefetch over kvflow + prefetch"),
)
CAPTURE_GOAL = 0.9
WASTE_GOAL = 0.20
STALL_GOAL = 0.02
DECODE_GBPS_GOAL = 30.0


# ----------------------------------------------------------------------------- lookups
def run_names(results: dict[str, Any]) -> list[str]:
    return list(results.get("runs_order") or [])


def policies(results: dict[str, Any]) -> list[str]:
    return [r for r in run_names(results) if r != UNBOUNDED]


def ok_runs(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(run, cell): record}`` of finished policy replays and ``{(unbounded, trace): record}``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results.get("runs", []):
        if r.get("status") == "ok":
            out[(r["run"], r["trace"] if r["run"] == UNBOUNDED else r["cell"])] = r
    return out


def cell_run(runs: dict[tuple[str, str], dict[str, Any]], results: dict[str, Any], cell: str,
             run: str) -> dict[str, Any] | None:
    if run == UNBOUNDED:
        trace = results.get("cells", {}).get(cell, {}).get("trace")
        return runs.get((UNBOUNDED, trace)) if trace else None
    return runs.get((run, cell))


def makespan(run: dict[str, Any] | None) -> float | None:
    if run is None or not run.get("summary"):
        return None
    value = run["summary"].get("makespan_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


class CellView:
    """The finished runs of one cell and the ratios between them."""

    def __init__(self, results: dict[str, Any], runs: dict[tuple[str, str], dict[str, Any]], cell: str) -> None:
        self.name = cell
        self.info = results.get("cells", {}).get(cell, {})
        self.runs = {name: cell_run(runs, results, cell, name) for name in run_names(results)}

    def span(self, run: str) -> float | None:
        return makespan(self.runs.get(run))

    def speedup(self, policy: str, baseline: str = BASELINE) -> float | None:
        num, den = self.span(baseline), self.span(policy)
        return None if num is None or den is None else num / den

    def ceiling(self, baseline: str = BASELINE) -> float | None:
        return self.speedup(UNBOUNDED, baseline)

    def captured(self, policy: str, baseline: str = BASELINE) -> float | None:
        base, pol, unb = self.span(baseline), self.span(policy), self.span(UNBOUNDED)
        if base is None or pol is None or unb is None or base - unb <= NO_HEADROOM * base:
            return None
        return (base - pol) / (base - unb)


def cache(run: dict[str, Any] | None) -> dict[str, Any]:
    return (run or {}).get("cache") or {}


def wasted_share(run: dict[str, Any] | None) -> float | None:
    c = cache(run)
    issued = c.get("prefetch_issued") or 0
    return None if not issued else (c.get("prefetch_wasted") or 0) / issued


def stall_seconds(run: dict[str, Any] | None) -> float | None:
    """Seconds requests waited for loads (``load_stall_seconds_total``; older results: the prefetch
    stall counter, the same sum)."""
    c = cache(run)
    return c.get("load_stall_s", c.get("prefetch_stall_s"))


def stall_share(run: dict[str, Any] | None) -> float | None:
    span = makespan(run)
    stall = stall_seconds(run)
    return None if span is None or stall is None else stall / span


# ----------------------------------------------------------------------------- formatting
def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def _gbps(value: float | None) -> str:
    return "n/e" if value is None else f"{value:.1f}"


def cell_order(results: dict[str, Any]) -> list[str]:
    """Cells in the order they were planned (targets first)."""
    return list(results.get("cells", {}))


# ----------------------------------------------------------------------------- tables
def speedup_table(results: dict[str, Any]) -> list[str]:
    runs = ok_runs(results)
    pols = policies(results)
    others = [p for p in pols if p != BASELINE]
    head = ["cell", "pool (% of WS)", *[f"{r} (s)" for r in run_names(results)], "ceiling over lru",
            *[f"{p} vs lru" for p in others], *[f"captured {p}" for p in others]]
    if "kvflow" in others and "pbkv" in others:
        head += ["pbkv vs kvflow", "ceiling over kvflow", "captured pbkv over kvflow"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for name in cell_order(results):
        v = CellView(results, runs, name)
        info = v.info
        row = [name, f"{_num(info.get('pool_tokens'))} ({_pct(info.get('actual_fraction'))})",
               *[_num(v.span(r)) for r in run_names(results)], _x(v.ceiling()),
               *[_x(v.speedup(p)) for p in others], *[_num(v.captured(p)) for p in others]]
        if "kvflow" in others and "pbkv" in others:
            row += [_x(v.speedup("pbkv", "kvflow")), _x(v.ceiling("kvflow")), _num(v.captured("pbkv", "kvflow"))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def loads_table(results: dict[str, Any]) -> list[str]:
    runs = ok_runs(results)
    lines = [("| cell | run | makespan (s) | load stall (s, % of makespan) | prefetch issued / completed / wasted "
              "(wasted %) | protection: released unused / over budget | on-demand loads: count, GB (GB/s) "
              "| prefetch: GB (GB/s; during decode GB/s) | device hit "
              "| host hit | prefetch hit | recomputed / unavoidable | evicted device pages |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in cell_order(results):
        v = CellView(results, runs, name)
        for r in run_names(results):
            run = v.runs.get(r)
            if run is None:
                continue
            c = cache(run)
            stall = stall_seconds(run)
            prefetch = " / ".join(_num(c.get(k)) for k in ("prefetch_issued", "prefetch_completed", "prefetch_wasted"))
            guard = " / ".join(_num(c.get(k)) for k in ("prefetch_released_unused", "prefetch_over_budget"))
            lines.append(
                f"| {name} | {r} | {_num(makespan(run))} | {_num(stall, 3)} ({_pct(stall_share(run), 1)}) "
                f"| {prefetch} ({_pct(wasted_share(run))}) | {guard} | {_num(c.get('demand_loads'))}, "
                f"{_num(c.get('load_back_gb'), 3)} "
                f"({_gbps(c.get('load_back_gbps'))}) | {_num(c.get('prefetch_gb'), 3)} ({_gbps(c.get('prefetch_gbps'))}; "
                f"{_gbps(c.get('prefetch_decode_gbps'))}) | {_num(c.get('device_hit_tokens'))} "
                f"| {_num(c.get('host_hit_tokens'))} | {_num(c.get('prefetch_hit_tokens'))} "
                f"| {_num(c.get('uncached_prompt_tokens'))} / {_num(c.get('unavoidable_tokens'))} "
                f"| {_num(c.get('evicted_device_pages'))} |")
    return lines


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target whose cell was planned."""
    runs = ok_runs(results)
    names = results.get("targets") or []
    rows = []
    for t in TARGETS:
        if t.role >= len(names) or names[t.role] not in results.get("cells", {}):
            continue
        v = CellView(results, runs, names[t.role])
        value, ceiling, captured = v.speedup(t.policy, t.baseline), v.ceiling(t.baseline), v.captured(t.policy, t.baseline)
        if value is None or ceiling is None:
            verdict = "not measured"
        elif ceiling >= t.goal:
            verdict = "yes" if value >= t.goal else "no"
        else:
            verdict = (f"ceiling {ceiling:.2f}x is below the target; captured "
                       f"{_num(captured)} {'>=' if captured is not None and captured >= CAPTURE_GOAL else '<'} "
                       f"{CAPTURE_GOAL}: {'yes' if captured is not None and captured >= CAPTURE_GOAL else 'no'}")
        run = v.runs.get(t.policy)
        rows.append({"target": t, "cell": v.name, "value": value, "ceiling": ceiling, "captured": captured,
                     "verdict": verdict, "wasted": wasted_share(run), "stall": stall_share(run),
                     "decode_gbps": cache(run).get("prefetch_decode_gbps"),
                     "load_back_gbps": cache(v.runs.get(t.baseline)).get("load_back_gbps")})
    return rows


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = [(f"| target | cell | measured | goal | ceiling | captured | met | wasted prefetches (<= "
              f"{WASTE_GOAL:.0%}) | load stall (<= {STALL_GOAL:.0%} of makespan) | prefetch during decode "
              f"(>= {DECODE_GBPS_GOAL:.0f} GB/s) | baseline load-back GB/s |"),
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in target_rows(results):
        t = row["target"]
        lines.append(f"| {t.what} | {row['cell']} | {_x(row['value'])} | {t.goal:.2f}x | {_x(row['ceiling'])} "
                     f"| {_num(row['captured'])} | {row['verdict']} | {_pct(row['wasted'])} | {_pct(row['stall'], 1)} "
                     f"| {_gbps(row['decode_gbps'])} | {_gbps(row['load_back_gbps'])} |")
    return lines


def traces_table(results: dict[str, Any]) -> list[str]:
    lines = ["| trace | requests | workflows (declared) | KV working set | largest request | prompt tokens "
             "| system prompts warmed | new after warm-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in results.get("traces", {}).items():
        lines.append(f"| {name} | {_num(t.get('requests'))} | {_num(t.get('workflows'))} "
                     f"({_num(t.get('declared_workflows'))}) | {_num(t.get('working_set_tokens'))} "
                     f"| {_num(t.get('max_request_tokens'))} | {_num(t.get('prompt_tokens'))} "
                     f"| {_num(t.get('warm_tokens'))} | {_pct(t.get('new_fraction_after_warm_up'), 1)} |")
    return lines


def sessions_table(results: dict[str, Any]) -> list[str]:
    lines = ["| server | run | device pool | host tier | replays | start (s) |", "|---:|---|---:|---:|---|---:|"]
    for s in results.get("sessions", []):
        lines.append(f"| {s['index']} | {s['run']} | {_num(s.get('pool_tokens'))} | {_num(s.get('host_tokens'))} "
                     f"| {', '.join(s.get('items', []))} | {_num(s.get('start_s'), 1)} |")
    return lines


def phase_summary(results: dict[str, Any]) -> list[str]:
    totals: dict[str, list[float]] = {}
    for p in results.get("phases", []):
        kind = " ".join(w for w in p["name"].split()[:2] if not w.isdigit())
        totals.setdefault(kind, []).append(p["seconds"])
    lines = ["| phase | count | seconds |", "|---|---:|---:|"]
    for kind, values in totals.items():
        lines.append(f"| {kind} | {len(values)} | {sum(values):.1f} |")
    return lines


def _any(results: dict[str, Any], key: str) -> bool:
    return any(cache(r).get(key) is not None for r in results.get("runs", []) if r.get("status") == "ok")


def notes(results: dict[str, Any]) -> list[str]:
    pb = results.get("page_bytes")
    out = [
        "- Each cell: one trace replayed by every run; `unbounded` is lru with a device pool holding the "
        "whole working set (its ceiling column: lru's makespan over unbounded's). Captured = "
        "(lru - policy) / (lru - unbounded); `-` where lru is within 1 % of unbounded (nothing to capture).",
        "- Before each measured replay the agents' system prompts are computed once outside any workflow "
        "(not measured): the steady state of a running service, and the cold misses no policy avoids are "
        "left out. `recomputed / unavoidable`: prompt tokens prefilled against those an unbounded cache "
        "prefills (radix-level count from the trace).",
        "- Servers are shared by cells with (nearly) the same pool; each replay has its own namespace of "
        "segment, workflow, agent and request ids, so nothing cached by one replay hits in another.",
        "- Load stall: seconds requests waited in the queue for their prefix to land (`load_stall_seconds_total`, "
        "summed over requests; older results: `prefetch_stall_seconds_total`). Every policy, lru included, "
        "loads through the same batched loader, so lru's on-demand loads are counted the same way; with "
        "`prefetch_wait_mode: layer` the wait inside the forward pass is not in it.",
        "- Protection: `released unused` counts prefetch protections given up before their request came "
        "(replan, workflow end, an admission short of room); `over budget` counts prefetches skipped because "
        "they would not fit beside the busy pages and the `prefetch_budget`.",
    ]
    if results.get("bench_server_args", {}).get("pressure_thresholds"):
        out.append("- Memory-pressure modes are off (thresholds moved to 99.96-99.99 % held): the pools are "
                   "small on purpose, and the modes would stop caching lru's KV from CRITICAL on.")
    if not _any(results, "load_back_seconds") or not _any(results, "prefetch_copy_seconds"):
        out.append("- GB/s `n/e`: the server does not export the copy timings (`load_back_seconds_total`, "
                   "`prefetch_copy_seconds_total`, `prefetch_decode_copy_{bytes,seconds}_total`); the GB moved "
                   f"come from `load_back_pages_total` x {_num(pb)} bytes per page and `prefetch_bytes_total`.")
    return out


def markdown(results: dict[str, Any]) -> str:
    if results.get("version") != 2:
        return (f"# End-to-end workflow benchmark\n\nThese results have format version "
                f"{results.get('version')!r}; this report reads version 2 (the sweep).\n")
    machine = results.get("machine", {})
    cfg = results.get("server_config", {})
    lines = [
        "# End-to-end workflow sweep", "",
        (f"- machine: {machine.get('gpu') or 'no GPU'}; torch {machine.get('torch', '?')}; "
         f"Python {machine.get('python', '?')}; {machine.get('platform', '?')}"),
        f"- server config: `{results.get('config_path')}`; model `{cfg.get('model_path')}`, page size "
        f"{cfg.get('page_size')}, {_num(results.get('page_bytes'))} bytes of KV per page",
        f"- command: `{' '.join(results.get('command_line', []))}`",
        "- runs: " + "; ".join(f"{r}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in a.items())
                               for r, a in results.get("run_args", {}).items()),
        "- every server: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in results.get("bench_server_args", {}).items()),
        f"- started {results.get('started', '?')}, wall {_num(results.get('wall_s'), 1)} s",
        "", "## Targets", "", *targets_table(results),
        "", "## Speedup next to the ceiling", "", *speedup_table(results),
        "", "## Loads, prefetches and cache", "", *loads_table(results),
        "", "## Traces", "", *traces_table(results),
        "", "## Servers", "", *sessions_table(results),
        "", "## Notes", "", *notes(results),
        "", "## Time", "", *phase_summary(results),
    ]
    failed = [r for r in results.get("runs", []) if r.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed or skipped replays", "", "| cell / trace | run | status | why |", "|---|---|---|---|"]
        for r in failed:
            why = str(r.get("error", "")).strip().splitlines()[0][:200].replace("|", "\\|") if r.get("error") else ""
            lines.append(f"| {r.get('cell') or r.get('trace')} | {r['run']} | {r.get('status')} | {why} |")
        for r in failed:
            if r.get("status") == "failed":
                lines += ["", f"### {r.get('cell') or r.get('trace')} / {r['run']}", "", "```",
                          str(r.get("error", "")).strip()[-3000:], "```"]
    return "\n".join(lines).rstrip() + "\n"


def write_plot(results: dict[str, Any], path: Path) -> str | None:
    """Speedup over lru per cell (bars per policy) with the unbounded ceiling (black mark), one
    panel per (workload, pool fraction). Returns None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    if results.get("version") != 2:
        return f"results format version {results.get('version')!r} (this plot reads 2)"
    runs = ok_runs(results)
    cells = results.get("cells", {})
    views = {n: CellView(results, runs, n) for n in cells}
    measured = [n for n, v in views.items() if v.span(BASELINE) is not None]
    if not measured:
        return "no lru replay finished"
    workloads = [w for w in ("peer", "concurrent", "dynamic") if any(cells[n]["workload"] == w for n in measured)]
    fractions = sorted({cells[n]["fraction"] for n in measured})
    others = [p for p in policies(results) if p != BASELINE]
    fig, axes = plt.subplots(len(workloads), len(fractions), figsize=(5.5 * len(fractions), 3.4 * len(workloads)),
                             squeeze=False)
    width = 0.8 / max(len(others) + 1, 1)
    goals = {cells.get(n, {}).get("workload"): t.goal for t, n in
             zip(TARGETS, results.get("targets") or []) if t.baseline == BASELINE}
    for i, w in enumerate(workloads):
        for j, f in enumerate(fractions):
            ax = axes[i][j]
            names = sorted((n for n in measured if cells[n]["workload"] == w and cells[n]["fraction"] == f),
                           key=lambda n: cells[n]["system_tokens"])
            xs = range(len(names))
            for k, p in enumerate(others):
                off = (k - len(others) / 2) * width
                vals = [views[n].speedup(p) or 0.0 for n in names]
                bars = ax.bar([x + off for x in xs], vals, width, label=p)
                for bar, n in zip(bars, names):
                    cap = views[n].captured(p)
                    if cap is not None:
                        ax.annotate(f"{cap:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                    ha="center", va="bottom", fontsize=7)
            ceil = [views[n].ceiling() for n in names]
            ax.scatter([x + (len(others) / 2 - 0.5) * width + width for x in xs],
                       [c if c is not None else float("nan") for c in ceil], marker="_", s=400, color="black",
                       label="ceiling (unbounded)", zorder=3)
            ax.axhline(1.0, color="grey", linewidth=0.8)
            if w in goals:
                ax.axhline(goals[w], color="red", linestyle="--", linewidth=0.8, label=f"target {goals[w]:.2f}x")
            ax.set_xticks(list(xs), [n.rsplit("-", 1)[0].split("-", 1)[1] for n in names])
            ax.set_title(f"{w}, pool {round(100 * f)} % of working set", fontsize=10)
            ax.set_ylabel("speedup over lru")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"Context Forge end to end: {results.get('machine', {}).get('gpu') or 'CPU'} "
                 "(labels: captured fraction of the ceiling)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
