"""Turns ``e2e_results.json`` into ``e2e_results.md`` (tables, targets) and ``e2e_results.png``.

Everything here reads the results dictionary only, so ``--plot-only DIR`` can rebuild both files
on a machine that never ran the benchmark. Speedup of policy P over baseline B on a trace is
``makespan(B) / makespan(P)`` on the same trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLICY_ORDER = ("lru", "kvflow", "pbkv")


@dataclass(frozen=True)
class Target:
    trace: str
    policy: str
    baseline: str
    goal: float
    what: str


TARGETS = (
    Target("peer", "kvflow", "lru", 1.83, "kvflow + prefetch over lru, one PEER workflow"),
    Target("concurrent", "kvflow", "lru", 2.19, "kvflow + prefetch over lru, concurrent workflows"),
    Target("dynamic", "pbkv", "kvflow", 1.26, "pbkv over kvflow, dynamic workflows"),
)


def ok_runs(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(trace, policy): run}`` of the replays that finished."""
    return {(r["trace"], r["policy"]): r for r in results.get("runs", []) if r.get("status") == "ok"}


def makespan(run: dict[str, Any] | None) -> float | None:
    if run is None or not run.get("summary"):
        return None
    value = run["summary"].get("makespan_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def speedup(runs: dict[tuple[str, str], dict[str, Any]], trace: str, policy: str, baseline: str) -> float | None:
    num, den = makespan(runs.get((trace, baseline))), makespan(runs.get((trace, policy)))
    return None if num is None or den is None else num / den


def recomputed(run: dict[str, Any] | None) -> int | None:
    """Prompt tokens prefilled because no tier had them: prompt - cached from the replies' usage
    (``uncached_prompt_tokens``); the ``recomputed_tokens`` metric for results that lack it."""
    if run is None:
        return None
    cache = run.get("cache", {})
    value = cache.get("uncached_prompt_tokens", cache.get("recomputed_tokens"))
    return int(value) if isinstance(value, (int, float)) else None


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ordered(results: dict[str, Any]) -> list[dict[str, Any]]:
    traces = list(results.get("traces", {}))
    def key(run: dict[str, Any]) -> tuple[int, int, str]:
        t = traces.index(run["trace"]) if run["trace"] in traces else len(traces)
        p = POLICY_ORDER.index(run["policy"]) if run["policy"] in POLICY_ORDER else len(POLICY_ORDER)
        return t, p, run["policy"]
    return sorted(results.get("runs", []), key=key)


def results_table(results: dict[str, Any]) -> list[str]:
    runs = ok_runs(results)
    lines = [
        ("| trace | policy | makespan (s) | vs lru | vs kvflow | mean latency (s) | p99 latency (s) | mean TTFT (s) "
         "| cached tokens | device hit | host hit | recomputed | stall (s) | prefetch issued / completed / wasted "
         "| evicted device pages |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in _ordered(results):
        trace, policy = run["trace"], run["policy"]
        if run.get("status") != "ok":
            error = str(run.get("error") or run.get("status")).splitlines()[0][:160].replace("|", "\\|")
            lines.append(f"| {trace} | {policy} | {run.get('status')}: {error} |" + " |" * 12)
            continue
        s, c = run["summary"], run.get("cache", {})
        prompt = s.get("prompt_tokens") or 0
        cached = s.get("cached_tokens") or 0
        share = f" ({100 * cached / prompt:.0f} %)" if prompt else ""
        prefetch = " / ".join(_num(c.get(k)) for k in ("prefetch_issued", "prefetch_completed", "prefetch_wasted"))
        lines.append(
            f"| {trace} | {policy} | {_num(s.get('makespan_s'))} | {_ratio(speedup(runs, trace, policy, 'lru'))} "
            f"| {_ratio(speedup(runs, trace, policy, 'kvflow'))} | {_num(s.get('mean_latency_s'), 3)} "
            f"| {_num(s.get('p99_latency_s'), 3)} | {_num(s.get('mean_ttft_s'), 3)} | {_num(cached)}{share} "
            f"| {_num(c.get('device_hit_tokens'))} | {_num(c.get('host_hit_tokens'))} | {_num(recomputed(run))} "
            f"| {_num(c.get('prefetch_stall_s'), 3)} | {prefetch} | {_num(c.get('evicted_device_pages'))} |"
        )
    return lines


def _evidence(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    c = run.get("cache", {})
    return (f"stall {_num(c.get('prefetch_stall_s'), 2)} s, recomputed {_num(recomputed(run))}, "
            f"host hit {_num(c.get('host_hit_tokens'))}")


def targets_table(results: dict[str, Any]) -> list[str]:
    runs = ok_runs(results)
    lines = [("| target | trace | measured | goal | met | policy: stall, recomputed, host hit "
              "| baseline: stall, recomputed, host hit |"), "|---|---|---:|---:|---|---|---|"]
    for t in TARGETS:
        if t.trace not in results.get("traces", {}):
            continue
        value = speedup(runs, t.trace, t.policy, t.baseline)
        met = "not measured" if value is None else ("yes" if value >= t.goal else "no")
        lines.append(f"| {t.what} | {t.trace} | {_ratio(value)} | {t.goal:.2f}x | {met} "
                     f"| {_evidence(runs.get((t.trace, t.policy)))} | {_evidence(runs.get((t.trace, t.baseline)))} |")
    return lines


def sizing_table(results: dict[str, Any]) -> list[str]:
    lines = ["| trace | requests | working set (tokens) | largest request | prompt tokens | device pool | host pool |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    pools = {run["trace"]: run.get("sizing") for run in results.get("runs", []) if run.get("sizing")}
    for kind, info in results.get("traces", {}).items():
        sizing = pools.get(kind) or {}
        lines.append(f"| {kind} | {_num(info.get('requests'))} | {_num(info.get('working_set_tokens'))} "
                     f"| {_num(info.get('max_request_tokens'))} | {_num(info.get('prompt_tokens'))} "
                     f"| {_num(sizing.get('max_total_tokens'))} | {_num(sizing.get('host_tokens'))} |")
    rules: dict[str, list[str]] = {}
    for run in results.get("runs", []):
        if run.get("sizing") and run["trace"] not in rules.setdefault(run["sizing"]["rule"], []):
            rules[run["sizing"]["rule"]].append(run["trace"])
    return lines + [""] + [f"- {', '.join(kinds)}: {rule}" for rule, kinds in rules.items()]


def markdown(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    lines = [
        "# End-to-end workflow benchmark", "",
        (f"- machine: {machine.get('gpu') or 'no GPU'}; torch {machine.get('torch', '?')}; "
         f"Python {machine.get('python', '?')}; {machine.get('platform', '?')}"),
        f"- server config: `{results.get('config_path')}`; model `{results.get('server_config', {}).get('model_path')}`",
        f"- command: `{' '.join(results.get('command_line', []))}`",
        "- policies: " + "; ".join(f"{p}: {' '.join(a)}" for p, a in results.get("policy_args", {}).items()),
        f"- servers: {results.get('server_per_note', '')}",
        f"- started {results.get('started', '?')}, wall {_num(results.get('wall_s'), 1)} s",
        "", "## Results", "", *results_table(results),
        "", "## Targets", "", *targets_table(results),
        "", "## Traces and KV pool sizing", "", *sizing_table(results),
        "", "## Phases", "", "| phase | seconds |", "|---|---:|",
        *[f"| {p['name']} | {p['seconds']:.1f} |" for p in results.get("phases", [])],
    ]
    failed = [r for r in results.get("runs", []) if r.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed or skipped replays", ""]
        for run in failed:
            lines += [f"### {run['trace']} / {run['policy']}: {run.get('status')}", "", "```",
                      str(run.get("error", "")).strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_plot(results: dict[str, Any], path: Path) -> str | None:
    """Writes the PNG; returns None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    runs = ok_runs(results)
    traces = [t for t in results.get("traces", {}) if any(k[0] == t for k in runs)]
    policies = [p for p in POLICY_ORDER if any(k[1] == p for k in runs)]
    policies += sorted({k[1] for k in runs} - set(policies))
    if not traces:
        return "no replay finished"
    fig, (ax_time, ax_tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(policies), 1)
    for i, policy in enumerate(policies):
        xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(traces))]
        spans = [makespan(runs.get((t, policy))) or 0.0 for t in traces]
        prefilled = [recomputed(runs.get((t, policy))) or 0 for t in traces]
        bars = ax_time.bar(xs, spans, width, label=policy)
        for bar, t in zip(bars, traces):
            ratio = speedup(runs, t, policy, "lru")
            if ratio is not None and policy != "lru":
                ax_time.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                 ha="center", va="bottom", fontsize=8)
        ax_tokens.bar(xs, prefilled, width, label=policy)
    titles = ((ax_time, "makespan (s); labels: speedup over lru"),
              (ax_tokens, "recomputed prompt tokens (prompt - cached)"))
    for ax, title in titles:
        ax.set_xticks(range(len(traces)), traces)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"Context Forge end to end: {results.get('machine', {}).get('gpu') or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
