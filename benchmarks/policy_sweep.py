"""Policy sweep: every eviction policy x every generated workload x three device capacities.

    python benchmarks/policy_sweep.py [--out DIR] [--profiles agentic,defaults] [--timing]

Writes ``policy_sweep.{md,json,png}`` under ``--out`` (default ``benchmarks/results``); with
``--timing`` also ``sim_timing.{md,json}`` (10,000-request traces, wall time per policy).

Method (docs/simulator.md explains each choice):

- Workloads come from the trace generators, once with their defaults and once with the
  ``agentic`` profile (large prompts, short outputs, small think time, workflows submitted
  together); the same trace is replayed under every policy.
- Working set = the reusable KV: tokens of the distinct page-aligned prompt prefixes that two or
  more requests share (a radix tree over every prompt's whole pages, counting only the pages used
  again). A cache of that size could serve every reuse. Device capacities are 25 / 50 / 75 % of
  it (page-aligned, at least the largest request); the host tier holds 2 x the device
  (``HOST_RATIO``).
- Eviction quality: lru, kvflow, pbkv, belady with prefetch OFF (``load_ahead_step`` 0).
  End to end: kvflow and pbkv with prefetch ON (``load_ahead_step`` 2). ``unbounded`` is lru
  with a device larger than the whole working set: the makespan floor no policy can beat.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from context_forge.sim.cost_model import CostModel
from context_forge.sim.simulator import SimConfig, simulate
from context_forge.trace.generators import GENERATORS, generate
from context_forge.trace.reader import parse_trace
from context_forge.trace.records import Trace

PAGE_SIZE = 16
HOST_RATIO = 2
FRACTIONS = (0.25, 0.50, 0.75)
KINDS = ("peer", "concurrent", "fanout", "dynamic", "simulation")
STATIC_KINDS = ("peer", "concurrent", "fanout")
VARIANTS = (("lru", 0), ("kvflow", 0), ("pbkv", 0), ("belady", 0), ("kvflow", 2), ("pbkv", 2))
AGENTIC = {"output_tokens": 32, "think_s": 0.1}
"""Agent calls with large prompts and short outputs: 32 output tokens, 0.1 s mean think time,
every workflow submitted at t = 0 (``stagger_s`` 0) where the kind has arrivals."""


def profile_params(profile: str, kind: str) -> dict[str, Any]:
    """Generator parameters of ``kind`` under ``profile`` (the same for every policy)."""
    if profile == "defaults":
        return {}
    if profile != "agentic":
        raise ValueError(f"unknown profile {profile!r}; choose agentic or defaults")
    params = dict(AGENTIC)
    fields = GENERATORS[kind].params.__dataclass_fields__
    if "stagger_s" in fields:
        params["stagger_s"] = 0.0
    return params


def build_trace(kind: str, params: dict[str, Any]) -> Trace:
    return parse_trace(json.dumps(r) for r in generate(kind, **params))


def reused_working_set(trace: Trace, page_size: int = PAGE_SIZE) -> tuple[int, int]:
    """``(reused, distinct)``: tokens of the distinct page-aligned prompt prefixes (a radix tree over
    every prompt's whole pages) that two or more requests share, and of all of them."""
    seen: dict[int, bool] = {}
    for req in trace.requests:
        tokens = req.tokens(trace.vocab_size)
        h = 0
        for k in range(len(tokens) // page_size):
            h = hash((h, tuple(tokens[k * page_size:(k + 1) * page_size])))
            seen[h] = h in seen
    return sum(seen.values()) * page_size, len(seen) * page_size


def largest_request(trace: Trace) -> int:
    return max(r.prompt_len + r.output_tokens for r in trace.requests)


@dataclass
class Workload:
    profile: str
    kind: str
    params: dict[str, Any]
    trace: Trace
    working_set: int
    distinct_prefix_tokens: int

    def capacities(self) -> list[int]:
        floor = -(-largest_request(self.trace) // PAGE_SIZE) * PAGE_SIZE
        return [max(floor, int(self.working_set * f) // PAGE_SIZE * PAGE_SIZE) for f in FRACTIONS]


def load_workload(profile: str, kind: str) -> Workload:
    params = profile_params(profile, kind)
    trace = build_trace(kind, params)
    return Workload(profile, kind, params, trace, *reused_working_set(trace))


def run_one(w: Workload, policy: str, device: int, host: int, load_ahead: int) -> dict[str, Any]:
    cfg = SimConfig(policy=policy, device_tokens=device, host_tokens=host, page_size=PAGE_SIZE,
                    load_ahead_step=load_ahead)
    out = simulate(w.trace, cfg).to_dict()
    out["load_ahead_step"] = load_ahead
    return out


def sweep(profiles: list[str]) -> list[dict[str, Any]]:
    """One row per (profile, kind, capacity, variant), plus one ``unbounded`` row per workload."""
    rows: list[dict[str, Any]] = []
    for profile in profiles:
        for kind in KINDS:
            w = load_workload(profile, kind)
            base = {"profile": profile, "kind": kind, "params": w.params, "working_set": w.working_set,
                    "distinct_prefix_tokens": w.distinct_prefix_tokens, "num_requests": len(w.trace.requests)}
            big = 2 * w.distinct_prefix_tokens + 4 * largest_request(w.trace)
            rows.append({**base, "fraction": None, "variant": "unbounded",
                         **run_one(w, "lru", big, 0, 0)})
            for frac, device in zip(FRACTIONS, w.capacities()):
                for policy, las in VARIANTS:
                    r = run_one(w, policy, device, HOST_RATIO * device, las)
                    variant = policy if las == 0 else f"{policy}+prefetch"
                    rows.append({**base, "fraction": frac, "variant": variant, **r})
                    print(f"{profile:8s} {kind:10s} {frac:.2f} {variant:16s} dev={r['device_hit_tokens']:9d} "
                          f"makespan={r['makespan_s']:8.2f} ({r['sim_wall_s']:.2f} s)", file=sys.stderr)
    return rows


def timing_runs() -> list[dict[str, Any]]:
    """10,000-request traces, each policy at 25 % of the working set: concurrent and dynamic under
    the agentic profile, and concurrent under the defaults (arrivals 2 s apart: few workflows
    live, a large tree per agent, the slowest case seen)."""
    specs = [("agentic", "concurrent", {"workflows": 625}), ("agentic", "dynamic", {"workflows": 870}),
             ("defaults", "concurrent", {"workflows": 625})]
    rows = []
    for profile, kind, extra in specs:
        params = {**profile_params(profile, kind), **extra}
        trace = build_trace(kind, params)
        ws = reused_working_set(trace)[0]
        device = int(ws * 0.25) // PAGE_SIZE * PAGE_SIZE
        for policy, las in VARIANTS:
            t0 = time.perf_counter()
            r = simulate(trace, SimConfig(policy=policy, device_tokens=device, host_tokens=HOST_RATIO * device,
                                          page_size=PAGE_SIZE, load_ahead_step=las))
            wall = time.perf_counter() - t0
            rows.append({"kind": kind, "params": params, "requests": len(trace.requests), "working_set": ws,
                         "device_tokens": device, "policy": policy, "load_ahead_step": las,
                         "wall_s": round(wall, 2), "makespan_s": r.makespan_s})
            print(f"timing {kind} {policy}+{las}: {wall:.1f} s", file=sys.stderr)
    return rows

# ---------------------------------------------------------------------------- reporting
def machine_info(command: list[str]) -> dict[str, Any]:
    """Command, date, machine and commit, recorded with every result."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"command": " ".join(command), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "commit": commit,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {(r["profile"], r["kind"], r["fraction"], r["variant"]): r for r in rows}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def thrash_fraction(idx: dict[tuple, dict[str, Any]], profile: str, kind: str) -> float:
    """The capacity at which LRU keeps the smallest share of prompt tokens on the device."""
    return min(FRACTIONS, key=lambda f: _ratio(idx[(profile, kind, f, "lru")]["device_hit_tokens"],
                                               idx[(profile, kind, f, "lru")]["prompt_tokens"]))


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 3's targets, each with the measured value and the figures that explain it."""
    idx = _index(rows)
    out: list[dict[str, Any]] = []
    profiles = sorted({r["profile"] for r in rows})

    def add(profile: str, kind: str, frac: float, name: str, value: float, need: float, why: str) -> None:
        out.append({"profile": profile, "kind": kind, "fraction": frac, "target": name,
                    "measured": round(value, 3), "needed": need, "met": value >= need, "figures": why})

    for profile in profiles:
        for kind in KINDS:
            for f in FRACTIONS:
                g = {v: idx[(profile, kind, f, v)] for v in ("lru", "kvflow", "pbkv", "belady")}
                dev = {v: r["device_hit_tokens"] for v, r in g.items()}
                why = (f"device hits lru {dev['lru']}, kvflow {dev['kvflow']}, pbkv {dev['pbkv']}, belady {dev['belady']}; "
                       f"recomputed kvflow {g['kvflow']['recomputed_tokens']}, pbkv {g['pbkv']['recomputed_tokens']}, "
                       f"belady {g['belady']['recomputed_tokens']}")
                if kind in STATIC_KINDS:
                    add(profile, kind, f, "kvflow/belady device hits", _ratio(dev["kvflow"], dev["belady"]), 0.95, why)
                else:
                    add(profile, kind, f, "pbkv/belady device hits", _ratio(dev["pbkv"], dev["belady"]), 0.90, why)
                    add(profile, kind, f, "pbkv/lru device hits", _ratio(dev["pbkv"], dev["lru"]), 1.25,
                        why + f"; belady/lru = {_ratio(dev['belady'], dev['lru']):.3f}")
                    add(profile, kind, f, "pbkv/kvflow device hits", _ratio(dev["pbkv"], dev["kvflow"]), 1.0, why)
        for kind, need in (("peer", 1.83), ("concurrent", 2.19)):
            f = thrash_fraction(idx, profile, kind)
            lru, kv = idx[(profile, kind, f, "lru")], idx[(profile, kind, f, "kvflow+prefetch")]
            floor = idx[(profile, kind, None, "unbounded")]
            why = (f"makespan lru {lru['makespan_s']:.2f} s, kvflow+prefetch {kv['makespan_s']:.2f} s, "
                   f"unbounded cache {floor['makespan_s']:.2f} s (ceiling {_ratio(lru['makespan_s'], floor['makespan_s']):.3f}x); "
                   f"stall lru {lru['stall_s']:.2f} s, kvflow {kv['stall_s']:.2f} s; recomputed lru "
                   f"{lru['recomputed_tokens']}, kvflow {kv['recomputed_tokens']}")
            add(profile, kind, f, "makespan lru / kvflow+prefetch", _ratio(lru["makespan_s"], kv["makespan_s"]), need, why)
    return out


def _cap(r: dict[str, Any]) -> str:
    return f"{int(r['fraction'] * 100)} % ({r['device_tokens']:,})"


def render_sweep(meta: dict[str, Any], rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    idx = _index(rows)
    lines = ["# Policy sweep (trace-driven simulator)", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}, commit {meta['commit'] or '?'}",
             (f"- machine: {meta['platform']}, {meta['cpu']}, {meta['cpu_count']} cores, Python {meta['python']}; "
             f"load average at start {meta['load_average_at_start']} (the machine is shared with other jobs)"),
             (f"- page size {PAGE_SIZE}; host tier = {HOST_RATIO} x device (hicache_ratio {HOST_RATIO}); "
             "write-back; default cost model (H100, Llama-3-8B shape; sim/cost_model.py)"),
             ("- capacity = % of the working set = reusable KV: distinct page-aligned prompt prefixes used by "
             "two or more requests (tokens)"),
             f"- profile `agentic`: {AGENTIC} and stagger_s 0 where the kind has it; `defaults`: generator defaults",
             "- see docs/simulator.md for the method and the analysis of every missed target", ""]
    for profile in sorted({r["profile"] for r in rows}):
        lines += [f"## Profile `{profile}`", "", ("### Eviction quality: device-hit tokens, prefetch OFF "
                  "(load_ahead_step 0 for every policy)"), "",
                  ("| workload | requests | working set | device capacity | lru | kvflow | pbkv | belady | "
                  "kvflow/belady | pbkv/belady | pbkv/lru |"), "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for kind in KINDS:
            for f in FRACTIONS:
                g = {v: idx[(profile, kind, f, v)] for v in ("lru", "kvflow", "pbkv", "belady")}
                d = {v: r["device_hit_tokens"] for v, r in g.items()}
                lines.append(f"| {kind} | {g['lru']['num_requests']} | {g['lru']['working_set']:,} | {_cap(g['lru'])} | "
                             f"{d['lru']:,} | {d['kvflow']:,} | {d['pbkv']:,} | {d['belady']:,} | "
                             f"{_ratio(d['kvflow'], d['belady']):.3f} | {_ratio(d['pbkv'], d['belady']):.3f} | "
                             f"{_ratio(d['pbkv'], d['lru']):.3f} |")
        lines += ["", ("### End to end: makespan (s); kvflow and pbkv with prefetch ON (load_ahead_step 2), "
                  "lru and belady without prefetch"), "",
                  ("| workload | device capacity | lru | kvflow+pf | pbkv+pf | belady | unbounded | lru/kvflow+pf | "
                  "lru/pbkv+pf | lru/unbounded | stall lru / kvflow+pf (s) | recomputed lru / kvflow+pf | "
                  "prefetched / wasted (kvflow) |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind in KINDS:
            floor = idx[(profile, kind, None, "unbounded")]["makespan_s"]
            for f in FRACTIONS:
                g = {v: idx[(profile, kind, f, v)] for v in ("lru", "kvflow+prefetch", "pbkv+prefetch", "belady")}
                m = {v: r["makespan_s"] for v, r in g.items()}
                kv = g["kvflow+prefetch"]
                lines.append(f"| {kind} | {_cap(g['lru'])} | {m['lru']:.2f} | {m['kvflow+prefetch']:.2f} | "
                             f"{m['pbkv+prefetch']:.2f} | {m['belady']:.2f} | {floor:.2f} | "
                             f"{_ratio(m['lru'], m['kvflow+prefetch']):.3f} | {_ratio(m['lru'], m['pbkv+prefetch']):.3f} | "
                             f"{_ratio(m['lru'], floor):.3f} | {g['lru']['stall_s']:.2f} / {kv['stall_s']:.2f} | "
                             f"{g['lru']['recomputed_tokens']:,} / {kv['recomputed_tokens']:,} | "
                             f"{kv['prefetched_tokens']:,} / {kv['prefetch_wasted_tokens']:,} |")
        lines += ["", "### Targets", "", "| target | workload | capacity | measured | needed | met | figures |",
                  "|---|---|---:|---:|---:|---|---|"]
        for c in checks:
            if c["profile"] == profile:
                lines.append(f"| {c['target']} | {c['kind']} | {int(c['fraction'] * 100)} % | {c['measured']:.3f} | "
                             f"{c['needed']} | {'yes' if c['met'] else '**no**'} | {c['figures']} |")
        lines.append("")
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(rows)
    profiles = sorted({r["profile"] for r in rows})
    fig, axes = plt.subplots(2, len(profiles), figsize=(8 * len(profiles), 8), squeeze=False)
    short = {"peer": "peer", "concurrent": "conc", "fanout": "fan", "dynamic": "dyn", "simulation": "sim"}
    labels = [f"{short[k]}\n{int(f * 100)}%" for k in KINDS for f in FRACTIONS]
    xs = range(len(labels))
    for col, profile in enumerate(profiles):
        top, bottom = axes[0][col], axes[1][col]
        for j, v in enumerate(("lru", "kvflow", "pbkv")):
            ys = [100 * _ratio(idx[(profile, k, f, v)]["device_hit_tokens"],
                               idx[(profile, k, f, "belady")]["device_hit_tokens"]) for k in KINDS for f in FRACTIONS]
            top.bar([x + (j - 1) * 0.27 for x in xs], ys, width=0.27, label=v)
        top.axhline(100, color="k", lw=0.8)
        top.set_ylabel("device-hit tokens, % of belady")
        top.set_title(f"{profile}: eviction quality (prefetch off)")
        for j, v in enumerate(("kvflow+prefetch", "pbkv+prefetch", "belady", "unbounded")):
            ys = [_ratio(idx[(profile, k, f, "lru")]["makespan_s"],
                         idx[(profile, k, None if v == "unbounded" else f, v)]["makespan_s"])
                  for k in KINDS for f in FRACTIONS]
            bottom.bar([x + (j - 1.5) * 0.2 for x in xs], ys, width=0.2, label=v)
        bottom.axhline(1, color="k", lw=0.8)
        bottom.set_ylabel("makespan speedup over lru")
        bottom.set_title(f"{profile}: end to end (kvflow/pbkv prefetch on)")
        for ax in (top, bottom):
            ax.set_xticks(list(xs))
            ax.set_xticklabels(labels, fontsize=7)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_timing(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = ["# Simulator speed: 10,000-request traces", "", f"- command: `{meta['command']}`",
             f"- date: {meta['date']}, commit {meta['commit'] or '?'}",
             (f"- machine: {meta['platform']}, {meta['cpu']}, {meta['cpu_count']} cores, Python {meta['python']}; "
             f"load average at start {meta['load_average_at_start']} (the machine is shared with other jobs)"),
             "- target: under 60 s per run; wall time includes building the cache and the oracle", "",
             "| trace | requests | device tokens (25 % ws) | policy | load_ahead_step | wall (s) | simulated makespan (s) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} {r['params']} | {r['requests']:,} | {r['device_tokens']:,} | {r['policy']} | "
                     f"{r['load_ahead_step']} | {r['wall_s']:.1f} | {r['makespan_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--profiles", default="agentic,defaults", help="comma-separated: agentic, defaults")
    ap.add_argument("--timing", action="store_true", help="also time 10,000-request traces")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profiles = [p for p in args.profiles.split(",") if p]
    for p in profiles:
        profile_params(p, "peer")
    meta = machine_info(["python", "benchmarks/policy_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    meta.update(page_size=PAGE_SIZE, host_ratio=HOST_RATIO, fractions=FRACTIONS,
                cost_model=CostModel().to_dict())
    rows = sweep(profiles)
    checks = targets(rows)
    (out / "policy_sweep.json").write_text(json.dumps({"meta": meta, "rows": rows, "targets": checks}, indent=1))
    (out / "policy_sweep.md").write_text(render_sweep(meta, rows, checks))
    write_plot(rows, out / "policy_sweep.png")
    if args.timing:
        trows = timing_runs()
        (out / "sim_timing.json").write_text(json.dumps({"meta": meta, "rows": trows}, indent=1))
        (out / "sim_timing.md").write_text(render_timing(meta, trows))
    print(f"wrote {out}/policy_sweep.{{md,json,png}}" + (" and sim_timing.{md,json}" if args.timing else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
