"""Policy sweep: every eviction policy x every generated workload x three device capacities.

    python benchmarks/policy_sweep.py [--out DIR] [--profiles agentic,defaults] [--timing]
        [--kinds peer,...] [--policies lru,...]

Writes ``policy_sweep.{md,json,png}`` under ``--out`` (default ``benchmarks/results``); with
``--timing`` also ``sim_timing.{md,json}`` (10,000-request traces, wall time per policy).

Method (docs/simulator.md explains each choice):

- Workloads come from the trace generators (``KINDS``: the five original kinds and the recurring
  ``template``, ``rounds``, ``tickets``), once with their defaults and once with the ``agentic``
  profile (large prompts, short outputs, small think time, workflows submitted together where
  the kind has ``stagger_s``; the recurring kinds keep their ``spacing_s``, since instances
  arriving one after another is what they model); the same trace is replayed under every policy.
- Working set = the reusable KV: tokens of the distinct page-aligned prompt prefixes that two or
  more requests share (a radix tree over every prompt's whole pages, counting only the pages used
  again). A cache of that size could serve every reuse. Device capacities are 25 / 50 / 75 % of
  it (page-aligned, at least the largest request); the host tier holds 2 x the device
  (``HOST_RATIO``).
- Policies come from the registry (``cache.policy``): eviction quality runs every registered
  policy with prefetch OFF (``load_ahead_step`` 0): the serving ones in registration order (lru,
  kvflow, pbkv), then the offline ones (belady, the oracle every ratio is taken against). End to
  end: every policy whose class ``prefetches`` (kvflow, pbkv) again with prefetch ON
  (``load_ahead_step`` 2). ``unbounded`` is lru with a device larger than the whole working set:
  the makespan floor no policy can beat.
- Targets (issue 3) name their policies; on a kind whose trace declares its workflows (peer,
  concurrent, fanout, template, rounds) kvflow is judged against belady, on one that does not
  (dynamic, simulation, tickets) pbkv against belady, lru and kvflow. The recurring kinds
  postdate issue 3: their rows apply the same thresholds.
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

from context_forge.cache import available_policies, policy_class, serving_policies
from context_forge.sim.cost_model import CostModel
from context_forge.sim.simulator import SimConfig, simulate
from context_forge.trace.generators import GENERATORS, generate
from context_forge.trace.reader import parse_trace
from context_forge.trace.records import Trace

PAGE_SIZE = 16
HOST_RATIO = 2
FRACTIONS = (0.25, 0.50, 0.75)
KINDS = ("peer", "concurrent", "fanout", "dynamic", "simulation", "template", "rounds", "tickets")
PREFETCH_STEP = 2
"""``load_ahead_step`` of the prefetch-ON variants."""


def sweep_policies() -> list[str]:
    """Every registered policy: serving ones in registration order, then the offline ones."""
    serving = serving_policies()
    return serving + [n for n in available_policies() if n not in serving]


def make_variants(policies: list[str]) -> tuple[tuple[str, int], ...]:
    """``(policy, load_ahead_step)``: each policy with prefetch off, then each prefetching policy on."""
    return tuple((p, 0) for p in policies) + tuple(
        (p, PREFETCH_STEP) for p in policies if policy_class(p).prefetches)


def variant_name(policy: str, load_ahead: int) -> str:
    return policy if load_ahead == 0 else f"{policy}+prefetch"


def oracle_policies(policies: list[str]) -> list[str]:
    """The offline optimum(s) ratios are taken against (``needs_oracle``: belady)."""
    return [p for p in policies if policy_class(p).needs_oracle]


POLICIES = sweep_policies()
VARIANTS = make_variants(POLICIES)
AGENTIC = {"output_tokens": 32, "think_s": 0.1}
"""Agent calls with large prompts and short outputs: 32 output tokens, 0.1 s mean think time,
every workflow submitted at t = 0 (``stagger_s`` 0) where the kind has ``stagger_s`` (the recurring
kinds keep their ``spacing_s``)."""


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


def sweep(profiles: list[str], kinds: tuple[str, ...] = KINDS,
          variants: tuple[tuple[str, int], ...] = VARIANTS) -> list[dict[str, Any]]:
    """One row per (profile, kind, capacity, variant), plus one ``unbounded`` row per workload."""
    rows: list[dict[str, Any]] = []
    for profile in profiles:
        for kind in kinds:
            w = load_workload(profile, kind)
            base = {"profile": profile, "kind": kind, "params": w.params, "working_set": w.working_set,
                    "distinct_prefix_tokens": w.distinct_prefix_tokens, "num_requests": len(w.trace.requests),
                    "declared": bool(w.trace.workflows)}
            big = 2 * w.distinct_prefix_tokens + 4 * largest_request(w.trace)
            rows.append({**base, "fraction": None, "variant": "unbounded",
                         **run_one(w, "lru", big, 0, 0)})
            for frac, device in zip(FRACTIONS, w.capacities()):
                for policy, las in variants:
                    r = run_one(w, policy, device, HOST_RATIO * device, las)
                    variant = variant_name(policy, las)
                    rows.append({**base, "fraction": frac, "variant": variant, **r})
                    print(f"{profile:8s} {kind:10s} {frac:.2f} {variant:16s} dev={r['device_hit_tokens']:9d} "
                          f"makespan={r['makespan_s']:8.2f} ({r['sim_wall_s']:.2f} s)", file=sys.stderr)
    return rows


def timing_runs(variants: tuple[tuple[str, int], ...] = VARIANTS) -> list[dict[str, Any]]:
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
        for policy, las in variants:
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


def _kinds(rows: list[dict[str, Any]], profile: str) -> list[str]:
    """The kinds swept under ``profile``, in ``KINDS`` order (others after, sorted)."""
    present = {r["kind"] for r in rows if r["profile"] == profile}
    return [k for k in KINDS if k in present] + sorted(present - set(KINDS))


def _variants(rows: list[dict[str, Any]], prefetch: bool) -> list[str]:
    """Variant names in the rows, in sweep order: prefetch off (``prefetch`` False) or on."""
    out: list[str] = []
    for r in rows:
        v = r["variant"]
        if r["fraction"] is not None and (r["load_ahead_step"] > 0) == prefetch and v not in out:
            out.append(v)
    return out


def _baseline(quality: list[str]) -> str:
    """What end-to-end speedups are relative to: the first policy that ranks by no workflow
    priority and needs no oracle (lru)."""
    for v in quality:
        cls = policy_class(v)
        if cls.priority is None and not cls.needs_oracle:
            return v
    return quality[0]


def _declared(row: dict[str, Any]) -> bool:
    return row.get("declared", row["kind"] in ("peer", "concurrent", "fanout"))


def thrash_fraction(idx: dict[tuple, dict[str, Any]], profile: str, kind: str, base: str = "lru") -> float:
    """The capacity at which ``base`` (LRU) keeps the smallest share of prompt tokens on the device."""
    return min(FRACTIONS, key=lambda f: _ratio(idx[(profile, kind, f, base)]["device_hit_tokens"],
                                               idx[(profile, kind, f, base)]["prompt_tokens"]))


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 3's targets, each with the measured value and the figures that explain it. A target
    whose policies were not swept is left out."""
    idx = _index(rows)
    out: list[dict[str, Any]] = []
    profiles = sorted({r["profile"] for r in rows})
    quality = _variants(rows, prefetch=False)

    def add(profile: str, kind: str, frac: float, name: str, value: float, need: float, why: str) -> None:
        out.append({"profile": profile, "kind": kind, "fraction": frac, "target": name,
                    "measured": round(value, 3), "needed": need, "met": value >= need, "figures": why})

    def have(*names: str) -> bool:
        return all(n in quality for n in names)

    for profile in profiles:
        for kind in _kinds(rows, profile):
            for f in FRACTIONS:
                g = {v: idx[(profile, kind, f, v)] for v in quality}
                dev = {v: r["device_hit_tokens"] for v, r in g.items()}
                why = ("device hits " + ", ".join(f"{v} {dev[v]}" for v in quality) + "; recomputed "
                       + ", ".join(f"{v} {g[v]['recomputed_tokens']}" for v in quality))
                if _declared(g[quality[0]]):
                    if have("kvflow", "belady"):
                        add(profile, kind, f, "kvflow/belady device hits", _ratio(dev["kvflow"], dev["belady"]), 0.95, why)
                    continue
                if have("pbkv", "belady"):
                    add(profile, kind, f, "pbkv/belady device hits", _ratio(dev["pbkv"], dev["belady"]), 0.90, why)
                if have("pbkv", "lru"):
                    extra = f"; belady/lru = {_ratio(dev['belady'], dev['lru']):.3f}" if have("belady") else ""
                    add(profile, kind, f, "pbkv/lru device hits", _ratio(dev["pbkv"], dev["lru"]), 1.25, why + extra)
                if have("pbkv", "kvflow"):
                    add(profile, kind, f, "pbkv/kvflow device hits", _ratio(dev["pbkv"], dev["kvflow"]), 1.0, why)
        for kind, need in (("peer", 1.83), ("concurrent", 2.19)):
            if kind not in _kinds(rows, profile) or not have("lru") or \
                    "kvflow+prefetch" not in _variants(rows, prefetch=True):
                continue
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
    quality = _variants(rows, prefetch=False)
    prefetch = _variants(rows, prefetch=True)
    oracles = oracle_policies(quality)
    online = [v for v in quality if v not in oracles]
    base = _baseline(quality)
    ratios = [(v, o) for o in oracles for v in online] + [(v, base) for v in online if v != base]
    lines = ["# Policy sweep (trace-driven simulator)", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}, commit {meta['commit'] or '?'}",
             (f"- machine: {meta['platform']}, {meta['cpu']}, {meta['cpu_count']} cores, Python {meta['python']}; "
             f"load average at start {meta['load_average_at_start']} (the machine is shared with other jobs)"),
             (f"- page size {PAGE_SIZE}; host tier = {HOST_RATIO} x device (hicache_ratio {HOST_RATIO}); "
             "write-back; default cost model (H100, Llama-3-8B shape; sim/cost_model.py)"),
             ("- capacity = % of the working set = reusable KV: distinct page-aligned prompt prefixes used by "
             "two or more requests (tokens)"),
             (f"- profile `agentic`: {AGENTIC} and stagger_s 0 where the kind has it (the recurring kinds keep "
              "their spacing_s); `defaults`: generator defaults"),
             f"- policies (from the registry): {', '.join(quality)}; with prefetch: {', '.join(prefetch) or 'none'}",
             ("- targets: issue 3's; the recurring kinds (template, rounds, tickets) postdate it and get the same "
              "thresholds (kvflow/belady where the trace declares its workflows, the pbkv ones where it does not)"),
             "- see docs/simulator.md for the method and the analysis of every missed target", ""]
    for profile in sorted({r["profile"] for r in rows}):
        kinds = _kinds(rows, profile)
        lines += [f"## Profile `{profile}`", "", ("### Eviction quality: device-hit tokens, prefetch OFF "
                  "(load_ahead_step 0 for every policy)"), "",
                  ("| workload | requests | working set | device capacity | " + " | ".join(quality) + " | "
                   + " | ".join(f"{a}/{b}" for a, b in ratios) + " |"),
                  "|---|---:|---:|---|" + "---:|" * (len(quality) + len(ratios))]
        for kind in kinds:
            for f in FRACTIONS:
                g = {v: idx[(profile, kind, f, v)] for v in quality}
                d = {v: r["device_hit_tokens"] for v, r in g.items()}
                first = g[quality[0]]
                lines.append(f"| {kind} | {first['num_requests']} | {first['working_set']:,} | {_cap(first)} | "
                             + " | ".join(f"{d[v]:,}" for v in quality) + " | "
                             + " | ".join(f"{_ratio(d[a], d[b]):.3f}" for a, b in ratios) + " |")
        shown = [base] + prefetch + oracles
        pf = prefetch[0] if prefetch else None
        lines += ["", (f"### End to end: makespan (s); {', '.join(prefetch) or 'no policy'} with prefetch ON "
                  f"(load_ahead_step {PREFETCH_STEP}), the others without prefetch"), "",
                  ("| workload | device capacity | " + " | ".join(shown) + " | unbounded | "
                   + " | ".join(f"{base}/{v}" for v in prefetch) + f" | {base}/unbounded |"
                   + (f" stall {base} / {pf} (s) | recomputed {base} / {pf} | prefetched / wasted ({pf}) |" if pf else "")),
                  "|---|---|" + "---:|" * (len(shown) + 1 + len(prefetch) + 1 + (3 if pf else 0))]
        for kind in kinds:
            floor = idx[(profile, kind, None, "unbounded")]["makespan_s"]
            for f in FRACTIONS:
                g = {v: idx[(profile, kind, f, v)] for v in shown}
                m = {v: r["makespan_s"] for v, r in g.items()}
                line = (f"| {kind} | {_cap(g[base])} | " + " | ".join(f"{m[v]:.2f}" for v in shown) + f" | {floor:.2f} | "
                        + " | ".join(f"{_ratio(m[base], m[v]):.3f}" for v in prefetch) + f" | {_ratio(m[base], floor):.3f} |")
                if pf:
                    kv = g[pf]
                    line += (f" {g[base]['stall_s']:.2f} / {kv['stall_s']:.2f} | "
                             f"{g[base]['recomputed_tokens']:,} / {kv['recomputed_tokens']:,} | "
                             f"{kv['prefetched_tokens']:,} / {kv['prefetch_wasted_tokens']:,} |")
                lines.append(line)
        lines += ["", "### Targets", "", "| target | workload | capacity | measured | needed | met | figures |",
                  "|---|---|---:|---:|---:|---|---|"]
        for c in checks:
            if c["profile"] == profile:
                lines.append(f"| {c['target']} | {c['kind']} | {int(c['fraction'] * 100)} % | {c['measured']:.3f} | "
                             f"{c['needed']} | {'yes' if c['met'] else '**no**'} | {c['figures']} |")
        lines.append("")
    return "\n".join(lines)


SHORT = {"peer": "peer", "concurrent": "conc", "fanout": "fan", "dynamic": "dyn", "simulation": "sim",
         "template": "tpl", "rounds": "rnd", "tickets": "tkt"}


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = _index(rows)
    profiles = sorted({r["profile"] for r in rows})
    quality = _variants(rows, prefetch=False)
    oracles = oracle_policies(quality)
    online = [v for v in quality if v not in oracles]
    base = _baseline(quality)
    fig, axes = plt.subplots(2, len(profiles), figsize=(8 * len(profiles), 8), squeeze=False)
    for col, profile in enumerate(profiles):
        kinds = _kinds(rows, profile)
        labels = [f"{SHORT.get(k, k)}\n{int(f * 100)}%" for k in kinds for f in FRACTIONS]
        xs = range(len(labels))
        top, bottom = axes[0][col], axes[1][col]
        if oracles:
            width = 0.8 / max(len(online), 1)
            for j, v in enumerate(online):
                ys = [100 * _ratio(idx[(profile, k, f, v)]["device_hit_tokens"],
                                   idx[(profile, k, f, oracles[0])]["device_hit_tokens"]) for k in kinds for f in FRACTIONS]
                top.bar([x + (j - (len(online) - 1) / 2) * width for x in xs], ys, width=width, label=v)
            top.axhline(100, color="k", lw=0.8)
            top.set_ylabel(f"device-hit tokens, % of {oracles[0]}")
        top.set_title(f"{profile}: eviction quality (prefetch off)")
        others = _variants(rows, prefetch=True) + oracles + ["unbounded"]
        width = 0.8 / len(others)
        for j, v in enumerate(others):
            ys = [_ratio(idx[(profile, k, f, base)]["makespan_s"],
                         idx[(profile, k, None if v == "unbounded" else f, v)]["makespan_s"])
                  for k in kinds for f in FRACTIONS]
            bottom.bar([x + (j - (len(others) - 1) / 2) * width for x in xs], ys, width=width, label=v)
        bottom.axhline(1, color="k", lw=0.8)
        bottom.set_ylabel(f"makespan speedup over {base}")
        bottom.set_title(f"{profile}: end to end (prefetching policies with prefetch on)")
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
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated trace kinds (default: all of {', '.join(KINDS)})")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated registered policies (default: every one: " + ", ".join(POLICIES) + ")")
    args = ap.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    kinds = tuple(k for k in args.kinds.split(",") if k)
    policies = [p for p in args.policies.split(",") if p]
    try:
        for p in profiles:
            profile_params(p, "peer")
        for k in kinds:
            if k not in GENERATORS:
                raise ValueError(f"unknown kind {k!r}; choose from {', '.join(GENERATORS)}")
        variants = make_variants([policy_class(p).name for p in policies])
    except ValueError as exc:
        ap.error(str(exc))
    if not policies or not kinds:
        ap.error("--kinds and --policies need at least one name each")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info(["python", "benchmarks/policy_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    meta.update(page_size=PAGE_SIZE, host_ratio=HOST_RATIO, fractions=FRACTIONS,
                cost_model=CostModel().to_dict())
    rows = sweep(profiles, kinds, variants)
    checks = targets(rows)
    (out / "policy_sweep.json").write_text(json.dumps({"meta": meta, "rows": rows, "targets": checks}, indent=1))
    (out / "policy_sweep.md").write_text(render_sweep(meta, rows, checks))
    write_plot(rows, out / "policy_sweep.png")
    if args.timing:
        trows = timing_runs(variants)
        (out / "sim_timing.json").write_text(json.dumps({"meta": meta, "rows": trows}, indent=1))
        (out / "sim_timing.md").write_text(render_timing(meta, trows))
    print(f"wrote {out}/policy_sweep.{{md,json,png}}" + (" and sim_timing.{md,json}" if args.timing else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
