"""The sweep: generate traces, group cells into servers, run sessions within the time budget.

A **session** is one server (one run kind: a serving policy or ``unbounded``, one device pool)
replaying several cells in turn. For each replay: a fresh namespace, a warm-up that computes the
agents' system prompts once (outside any workflow, not measured), a ``/metrics`` scrape, the
replay through SScheduler's ``replay_trace``, a second scrape. Sessions run group by group: the
serving policies on the group's pool, then (after the first group, and once at the end for the
others) ``unbounded``, so the target cells get their ceiling first.

Budget. Before a group starts, the time its sessions need (server starts and replays, estimated
from what this run measured so far) plus the ``unbounded`` replays its cells still need is
compared with what is left; the group's lowest-priority cells are dropped until it fits, or the
group is skipped. Replays are also refused when too little time is left. ``e2e_results.json`` is
rewritten after every replay, so a run cut short keeps what finished; a failed replay is recorded
with its error and the tail of the server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from context_forge.cache import policy_class, serving_policies
from context_forge.config import ServerConfig
from context_forge.model.config import ModelConfig
from sscheduler.replay import replay_trace

from . import prom, report
from .plan import (
    UNBOUNDED, Cell, CellPool, PreparedTrace, Profile, ServerGroup, cell_pool, group_cells, hicache_ratio,
    host_pages_for, namespaced, prepare_trace, unbounded_pages, warm_prompts,
)
from .server import ServerProcess, ServerStartError

RESULTS_JSON = "e2e_results.json"
RESULTS_MD = "e2e_results.md"
RESULTS_PNG = "e2e_results.png"
VERSION = 2
STOP_RESERVE_S = 15.0
"""Seconds of the budget kept for stopping the last server and writing the results."""

BENCH_SERVER_ARGS: dict[str, str] = {
    "enable_hierarchical_cache": "true",
    "hicache_size": "0",
    "memory_monitor": "none",
    "pressure_thresholds": "0.9996,0.9997,0.9998,0.9999",
    "pressure_hysteresis": "0",
}
"""Keys every server gets. The pool is smaller than the working set on purpose, and the
memory-pressure modes would read that as an emergency (from CRITICAL the cache admits only KV of
agents expected soon, none of lru's; in EMERGENCY nothing and no prefetch), so their thresholds are
moved to the top: SGLang's HiCache, which the papers compare against, has no such modes.
``--keep-pressure-modes`` keeps the config's."""


def runs_from_registry() -> list[str]:
    """Every serving policy of the registry, then ``unbounded``."""
    return [*serving_policies(), UNBOUNDED]


def run_args(run: str) -> dict[str, str]:
    """Server keys of a run: the policy and whether the prefetcher runs (the policy class says)."""
    policy = "lru" if run == UNBOUNDED else run
    prefetch = policy_class(policy).prefetches
    return {"radix_eviction_policy": policy, "enable_prefetch": "true" if prefetch else "false"}


@dataclass
class Settings:
    config_path: Path
    out: Path
    work_dir: Path
    runs: list[str]
    cells: list[str] | None
    profile: Profile
    time_budget_s: float = 520.0
    server_timeout_s: float = 240.0
    replay_timeout_s: float = 120.0
    warm_system_prompts: bool = True
    keep_pressure_modes: bool = False
    server_args: dict[str, str] = field(default_factory=dict)
    smoke: bool = False
    dry_run: bool = False
    prime_server: bool = False
    """Replay the first group's traces on a throwaway lru server first (see ``Sweep._prime``)."""


def model_limits(cfg: ServerConfig) -> tuple[ModelConfig, int]:
    """The configured model's shape and context length, without loading it."""
    model = ModelConfig.preset(cfg.model_path) if cfg.is_preset else ModelConfig.from_file(cfg.model_path)
    return model, cfg.context_length or model.context_len


def page_bytes(model: ModelConfig, cfg: ServerConfig) -> int:
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cfg.device == "cuda" else "float32")
    size = 4 if dtype == "float32" else 2
    return model.num_hidden_layers * 2 * cfg.page_size * model.num_key_value_heads * model.head_dim * size


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception as exc:  # machine info must never sink the results
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    return info


@dataclass
class Item:
    """One replay of a session: a cell (policy runs) or a trace (``unbounded``)."""

    trace: PreparedTrace
    cell: Cell | None = None


@dataclass
class Session:
    run: str
    pool_pages: int
    host_pages: int
    items: list[Item]
    group: int | None = None
    prime: bool = False
    """A throwaway session: its replays go to ``results["prime"]``, not ``results["runs"]``."""

    @property
    def name(self) -> str:
        return f"{self.run}-{self.pool_pages}p"


class Estimator:
    """Seconds a server start or a replay will take: a crude model at first, scaled by what this
    run measured (``observe``), and the measured time of the same trace once there is one."""

    def __init__(self, gpu: bool) -> None:
        self.start_s = 25.0 if gpu else 5.0
        self.started = 0
        self.gpu = gpu
        self._scale = [0.0, 0.0]
        self._seen: dict[str, float] = {}

    def model_s(self, t: PreparedTrace) -> float:
        reqs = t.trace.requests
        fp = t.footprint
        if self.gpu:
            step, prefill, load = 0.012, 2.0e4, 3.0e-6
        else:
            step, prefill, load = 0.004, 4.0e4, 1.0e-7
        lanes = max(1, len(t.trace.workflow_ids()))
        decode = sum(max(1, r.output_tokens) for r in reqs) * step / min(lanes, 16) * (1.5 if lanes > 1 else 1.0)
        return decode + fp.prompt_tokens * load + (fp.new_tokens + fp.warm_tokens) / prefill + 0.3

    def replay_s(self, t: PreparedTrace) -> float:
        if t.name in self._seen:
            return self._seen[t.name]
        est, act = self._scale
        return self.model_s(t) * (act / est if est > 0 else 1.0)

    def observe_replay(self, t: PreparedTrace, seconds: float) -> None:
        self._seen[t.name] = max(self._seen.get(t.name, 0.0), seconds)
        self._scale[0] += self.model_s(t)
        self._scale[1] += seconds

    def observe_start(self, seconds: float) -> None:
        self.start_s = (self.start_s * self.started + seconds) / (self.started + 1) if self.started else seconds
        self.started += 1

    def session_s(self, traces: list[PreparedTrace]) -> float:
        return self.start_s + sum(self.replay_s(t) for t in traces)


class Bench:
    """One sweep: the results dictionary, the phase clock and the time budget."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.s = settings
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + settings.time_budget_s
        self.results: dict[str, Any] = {
            "benchmark": "e2e_workflows", "version": VERSION, "command_line": [sys.executable, *argv],
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "config_path": str(settings.config_path), "settings": _jsonable(dataclasses.asdict(settings)),
            "runs_order": list(settings.runs), "run_args": {r: run_args(r) for r in settings.runs},
            "bench_server_args": {} if settings.keep_pressure_modes else dict(BENCH_SERVER_ARGS),
            "targets": list(settings.profile.targets),
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "traces": {}, "cells": {}, "groups": [], "sessions": [], "runs": [], "phases": [],
        }
        self.estimate = Estimator(gpu=False)

    # ----- bookkeeping --------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t
            self.results["phases"].append({"name": name, "seconds": round(seconds, 3)})
            print(f"[{time.perf_counter() - self.t0:7.1f} s] {name}: {seconds:.1f} s", flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        self.results["wall_s"] = round(time.perf_counter() - self.t0, 3)
        self.s.out.mkdir(parents=True, exist_ok=True)
        tmp = self.s.out / (RESULTS_JSON + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(self.s.out / RESULTS_JSON)

    def record(self, run: dict[str, Any]) -> None:
        self.results["runs"].append(run)
        self.save()

    def record_prime(self, run: dict[str, Any]) -> None:
        self.results.setdefault("prime", []).append(run)
        self.save()

    # ----- planning -----------------------------------------------------------------------------
    def plan(self) -> tuple[ServerConfig, list[ServerGroup], dict[str, PreparedTrace]]:
        from .plan import select_cells

        cfg = ServerConfig.from_sources(str(self.s.config_path), _flags(self.s.server_args))
        self.results["server_config"] = cfg.to_dict()
        model, context_len = model_limits(cfg)
        self.page_size = cfg.page_size
        self.results["page_bytes"] = page_bytes(model, cfg)
        self.results["page_size"] = cfg.page_size
        self.estimate = Estimator(gpu=cfg.device == "cuda")
        cells = select_cells(self.s.profile, self.s.cells)
        traces: dict[str, PreparedTrace] = {}
        with self.phase("generate traces"):
            for c in cells:
                if c.trace not in traces:
                    traces[c.trace] = prepare_trace(c.workload, c.system_tokens, self.s.profile,
                                                    self.s.work_dir / "traces", context_len, model.vocab_size)
        for name, t in traces.items():
            self.results["traces"][name] = t.describe()
            fp = t.footprint
            print(f"  {name}: {len(t.trace.requests)} requests, KV working set {fp.working_set} tokens, "
                  f"largest request {fp.max_request}, new after warm-up {100 * t.new_fraction:.1f} % of "
                  f"{fp.prompt_tokens} prompt tokens", flush=True)
        pools = [cell_pool(c, traces[c.trace], cfg.page_size) for c in cells]
        groups = order_groups(group_cells(pools, self.s.profile.group_tolerance), self.s.profile)
        for i, g in enumerate(groups):
            for m in g.members:
                self.results["cells"][m.cell.name] = self._cell_info(m, g, i)
            host = host_pages_for([traces[c.trace] for c in g.cells], cfg.page_size, self.s.profile.host_margin)
            self.results["groups"].append({"index": i, "pool_tokens": g.pool_pages * cfg.page_size,
                                           "host_tokens": host * cfg.page_size, "cells": [c.name for c in g.cells]})
            print(f"server group {i}: device pool {g.pool_pages * cfg.page_size} tokens, host "
                  f"{host * cfg.page_size}; cells "
                  + ", ".join(f"{m.cell.name} ({100 * g.pool_pages / max(1, m.working_set / cfg.page_size):.0f} %)"
                              for m in g.members), flush=True)
        return cfg, groups, traces

    def _cell_info(self, m: CellPool, g: ServerGroup, index: int) -> dict[str, Any]:
        ps = self.page_size
        return {"trace": m.cell.trace, "workload": m.cell.workload, "system_tokens": m.cell.system_tokens,
                "fraction": m.cell.fraction, "group": index, "working_set_tokens": m.working_set,
                "wanted_pool_tokens": m.wanted_pages * ps, "pool_tokens": g.pool_pages * ps,
                "actual_fraction": round(g.pool_pages * ps / max(m.working_set, 1), 4)}

    # ----- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg, groups, traces = self.plan()
        if self.s.dry_run:
            self.results["preview"] = self.preview(groups, traces)
            self.save()
            print(f"dry run: no server started; the plan is in {self.s.out / RESULTS_JSON}", flush=True)
            return 0
        self.save()
        policies = [r for r in self.s.runs if r != UNBOUNDED]
        want_unbounded = UNBOUNDED in self.s.runs
        ceiling_done: set[str] = set()
        owed: list[PreparedTrace] = []  # traces whose policy runs ran but whose ceiling did not yet
        try:
            if self.s.prime_server and groups:
                self._prime(groups[0], traces, cfg)
            for i, g in enumerate(groups):
                members = self._fit(g, policies, want_unbounded, ceiling_done, owed, traces, self.left())
                if not members:
                    self._skip_group(g, policies, "time budget: the group's sessions do not fit what is left")
                    continue
                dropped = [m for m in g.members if m not in members]
                if dropped:
                    self._skip_group(ServerGroup(g.pool_pages, dropped), policies,
                                     "time budget: dropped from its server group to fit what is left")
                items = [Item(traces[m.cell.trace], m.cell) for m in members]
                host = host_pages_for([it.trace for it in items], cfg.page_size, self.s.profile.host_margin)
                for policy in policies:
                    self._session(Session(policy, g.pool_pages, host, items, i), cfg)
                new = [traces[n] for n in dict.fromkeys(m.cell.trace for m in members)
                       if n not in ceiling_done and all(n != t.name for t in owed)]
                owed.extend(new)
                if want_unbounded and i == 0 and owed:
                    self._unbounded(owed, cfg)
                    ceiling_done.update(t.name for t in owed)
                    owed = []
            if want_unbounded and owed:
                self._unbounded(owed, cfg)
        finally:
            self.results["machine"] = machine_info()
            self.save()
            self.write_reports()
        bad = [r for r in self.results["runs"] if r["status"] != "ok"]
        print(f"done: {len(self.results['runs']) - len(bad)} replays ok, {len(bad)} failed or skipped; "
              f"results in {self.s.out / RESULTS_JSON}", flush=True)
        return 1 if bad else 0

    def _fit(self, g: ServerGroup, policies: list[str], want_unbounded: bool, done: set[str],
             owed: list[PreparedTrace], traces: dict[str, PreparedTrace], left: float) -> list[CellPool]:
        """The group's members that fit the budget: drop from the lowest priority until the
        group's policy sessions, and the ``unbounded`` session that its cells and the earlier
        groups' cells still need, fit what is left."""
        members = list(g.members)
        owed_names = {t.name for t in owed}
        while members:
            ts = [traces[m.cell.trace] for m in members]
            need = len(policies) * self.estimate.session_s(ts)
            fresh = [traces[n] for n in dict.fromkeys(m.cell.trace for m in members)
                     if n not in done and n not in owed_names]
            if want_unbounded and (owed or fresh):
                need += self.estimate.session_s([*owed, *fresh])
            if need + STOP_RESERVE_S <= left:
                return members
            members.pop()
        return []

    def preview(self, groups: list[ServerGroup], traces: dict[str, PreparedTrace]) -> list[dict[str, Any]]:
        """The schedule ``run`` would follow if every estimate held (``--dry-run`` prints it):
        per group, the cells that fit, the estimated seconds and the time left after it."""
        policies = [r for r in self.s.runs if r != UNBOUNDED]
        want_unbounded = UNBOUNDED in self.s.runs
        left = self.s.time_budget_s - STOP_RESERVE_S
        done: set[str] = set()
        owed: list[PreparedTrace] = []
        rows = []
        est = self.estimate
        for i, g in enumerate(groups):
            members = self._fit(g, policies, want_unbounded, done, owed, traces, left + STOP_RESERVE_S)
            ts = [traces[m.cell.trace] for m in members]
            cost = len(policies) * est.session_s(ts) if members else 0.0
            new = [traces[n] for n in dict.fromkeys(m.cell.trace for m in members)
                   if n not in done and all(n != t.name for t in owed)]
            owed.extend(new)
            if want_unbounded and owed and (i == 0 or i == len(groups) - 1):
                cost += est.session_s(owed)
                done.update(t.name for t in owed)
                owed = []
            left -= cost
            rows.append({"group": i, "cells": [m.cell.name for m in members],
                         "dropped": [m.cell.name for m in g.members if m not in members],
                         "estimated_s": round(cost, 1), "left_s": round(left, 1)})
            print(f"  preview group {i}: {', '.join(rows[-1]['cells']) or '(skipped)'}; ~{cost:.0f} s, "
                  f"~{left:.0f} s left" + (f"; dropped {', '.join(rows[-1]['dropped'])}" if rows[-1]["dropped"] else ""),
                  flush=True)
        if want_unbounded and owed:
            cost = est.session_s(owed)
            left -= cost
            rows.append({"group": "unbounded", "cells": [t.name for t in owed], "dropped": [],
                         "estimated_s": round(cost, 1), "left_s": round(left, 1)})
            print(f"  preview unbounded: {', '.join(t.name for t in owed)}; ~{cost:.0f} s, ~{left:.0f} s left")
        return rows

    def _skip_group(self, g: ServerGroup, policies: list[str], why: str) -> None:
        for m in g.members:
            for policy in policies:
                self.record({"run": policy, "cell": m.cell.name, "trace": m.cell.trace, "status": "skipped",
                             "error": f"{why} ({max(self.left(), 0):.0f} s left)"})

    def _prime(self, g: ServerGroup, traces: dict[str, PreparedTrace], cfg: ServerConfig) -> None:
        """One throwaway lru server over the first group's traces, before any measured one. The
        first server on a fresh machine was slower at everything (start, warm-up, replay: peer-16k
        1.3x with the same loads and hits, ``results/e2e/h100_2026-12-07e``); whether this run
        absorbs that cost is for the results to show (compare with the run order reversed)."""
        items = [Item(traces[n]) for n in dict.fromkeys(m.cell.trace for m in g.members)]
        host = host_pages_for([it.trace for it in items], cfg.page_size, self.s.profile.host_margin)
        self._session(Session("lru", g.pool_pages, host, items, prime=True), cfg)

    def _unbounded(self, traces: list[PreparedTrace], cfg: ServerConfig) -> None:
        pool = unbounded_pages(traces, cfg.page_size)
        host = max(host_pages_for(traces, cfg.page_size, self.s.profile.host_margin), int(1.05 * pool) + 1)
        self._session(Session(UNBOUNDED, pool, host, [Item(t) for t in traces]), cfg)

    def _session(self, sess: Session, cfg: ServerConfig) -> None:
        """One server: start, warm up, replay each item, stop."""
        ps = cfg.page_size
        index = len(self.results["sessions"])
        record = self.record_prime if sess.prime else self.record
        info: dict[str, Any] = {"index": index, "run": "prime-" + sess.run if sess.prime else sess.run,
                                "group": sess.group,
                                "pool_tokens": sess.pool_pages * ps, "host_tokens": sess.host_pages * ps,
                                "items": [it.cell.name if it.cell else it.trace.name for it in sess.items]}
        self.results["sessions"].append(info)
        base = {"run": sess.run, "session": index, "pool_tokens": sess.pool_pages * ps,
                "host_tokens": sess.host_pages * ps}

        def item_base(it: Item) -> dict[str, Any]:
            ws = it.trace.footprint.working_set
            return base | {"cell": it.cell.name if it.cell else None, "trace": it.trace.name,
                           "pool_fraction": round(sess.pool_pages * ps / max(ws, 1), 4)}
        if self.left() < STOP_RESERVE_S + 5:
            for it in sess.items:
                record(item_base(it) | {"status": "skipped", "error": f"time budget: {max(self.left(), 0):.0f} s "
                                                                      "left before the server start"})
            return
        largest = max(len(it.trace.trace.workflow_ids()) for it in sess.items)
        overrides = (run_args(sess.run) | ({} if self.s.keep_pressure_modes else BENCH_SERVER_ARGS)
                     | {"max_total_tokens": str(sess.pool_pages * ps),
                        "hicache_ratio": hicache_ratio(sess.host_pages, sess.pool_pages),
                        "cuda_graph_max_bs": str(max(1, min(64, largest)))}
                     | self.s.server_args)
        server = ServerProcess(self.s.config_path.resolve(), overrides,
                               self.s.work_dir / "logs" / f"s{index:02d}-{sess.name}.log")
        info |= {"command": server.command, "log": str(server.log_path), "url": server.url}
        try:
            try:
                with self.phase(f"start server {index} {sess.name}"):
                    info["start_s"] = round(server.start(min(self.s.server_timeout_s, self.left() - STOP_RESERVE_S)), 3)
                self.estimate.observe_start(info["start_s"])
                with self.phase(f"warm up server {index}"):
                    # As long as the longest request (within half the pool), so first calls of the
                    # replay's prompt shapes happen here. It does not remove the cost the first
                    # server on a fresh machine pays (H100: 1.3-1.5x on peer-16k with the same loads
                    # and hits, results/e2e/h100_2026-12-07e): compare with the run order reversed.
                    longest = max(it.trace.footprint.max_request for it in sess.items)
                    info["warm_up_s"] = round(server.warm_up(min(longest, sess.pool_pages * ps // 2)), 3)
            except (ServerStartError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                for it in sess.items:
                    record(item_base(it) | {"status": "failed", "error": f"server start failed: "
                                                                         f"{type(exc).__name__}: {exc}"})
                return
            abandoned = ""
            for k, it in enumerate(sess.items):
                run = item_base(it) | {"namespace": f"s{index}r{k}"}
                if abandoned:
                    record(run | {"status": "skipped", "error": abandoned})
                    continue
                run = self._replay(server, it, run)
                record(run)
                if run.get("timed_out"):
                    abandoned = f"the server's previous replay ({run['trace']}) was cut off with requests in flight"
        finally:
            with self.phase(f"stop server {index}"):
                info["stop_s"] = round(server.stop(), 3)
            self.save()

    def _replay(self, server: ServerProcess, it: Item, run: dict[str, Any]) -> dict[str, Any]:
        label = f"{run['cell'] or run['trace']} / {run['run']}"
        if self.left() - STOP_RESERVE_S < 5:
            return run | {"status": "skipped", "error": f"time budget: {max(self.left(), 0):.0f} s left"}
        budget = min(self.left() - STOP_RESERVE_S, self.s.replay_timeout_s)
        if not server.alive():
            return run | {"status": "failed", "error": f"server is not running:\n{server.log_tail()}"}
        trace = namespaced(it.trace.records, run["namespace"])
        try:
            if self.s.warm_system_prompts:
                with self.phase(f"warm system prompts {label}"):
                    t = time.perf_counter()
                    prompts = warm_prompts(trace)
                    server.prefill(prompts, timeout_s=budget)
                    run |= {"warm_s": round(time.perf_counter() - t, 3), "warm_prompts": len(prompts)}
            with self.phase(f"replay {label}"):
                before = prom.scrape(server.url)
                t0 = time.perf_counter()
                left = min(self.left() - STOP_RESERVE_S, self.s.replay_timeout_s)
                result = asyncio.run(asyncio.wait_for(replay_trace(
                    trace, server.url, target="context_forge", progress=False, timeout_s=left), timeout=left))
                wall = time.perf_counter() - t0
                after = prom.scrape(server.url)
        except (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException):
            return run | {"status": "failed", "timed_out": True,
                          "error": f"warm-up or replay did not finish within {budget:.1f} s "
                                   f"(--replay-timeout-s {self.s.replay_timeout_s:g}, {self.left():.0f} s of the "
                                   f"time budget left)"}
        except Exception as exc:  # record every failure and go on with the next replay
            return run | {"status": "failed",
                          "error": f"{type(exc).__name__}: {exc}\n--- server log tail ---\n{server.log_tail()}"}
        self.estimate.observe_replay(it.trace, wall + run.get("warm_s", 0.0))
        metrics = prom.difference(before, after)
        summary = result.summary().to_dict()
        cache = prom.cache_stats(metrics["delta"], self.results["page_bytes"])
        cache["uncached_prompt_tokens"] = summary["prompt_tokens"] - summary["cached_tokens"]
        cache["unavoidable_tokens"] = max(it.trace.footprint.new_tokens - (
            it.trace.footprint.warm_tokens if self.s.warm_system_prompts else 0), 0)
        print(f"  {label}: makespan {summary['makespan_s']:.2f} s, recomputed {cache['uncached_prompt_tokens']} "
              f"(unavoidable {cache['unavoidable_tokens']}), host hit {cache['host_hit_tokens']}, "
              f"stall {cache['load_stall_s']:.2f} s, prefetch {cache['prefetch_issued']} issued / "
              f"{cache['prefetch_wasted']} wasted", flush=True)
        records = [[r.agent_id.split(".", 1)[-1], round(r.sent_s, 4), None if r.first_token_s is None
                    else round(r.first_token_s, 4), round(r.finished_s, 4), r.prompt_tokens, r.cached_tokens]
                   for r in result.records]
        return run | {"status": "ok", "replay_wall_s": round(wall, 3), "summary": summary, "cache": cache,
                      "metrics": metrics, "records_columns": ["agent", "sent_s", "first_token_s", "finished_s",
                                                              "prompt_tokens", "cached_tokens"],
                      "records": records}

    def write_reports(self) -> None:
        write_reports(self.results, self.s.out)


def order_groups(groups: list[ServerGroup], profile: Profile) -> list[ServerGroup]:
    """The group holding the first target cell first, then by cells per server start (more first),
    then by the priority of their first cell."""
    first = [g for g in groups if any(c.name == profile.targets[0] for c in g.cells)][:1]
    rest = [g for g in groups if g not in first]
    rest.sort(key=lambda g: (-len(g.members), groups.index(g)))
    return first + rest


def write_reports(results: dict[str, Any], out: Path) -> None:
    """``e2e_results.md`` and (if matplotlib imports) ``e2e_results.png`` under ``out``."""
    (out / RESULTS_MD).write_text(report.markdown(results))
    print(f"wrote {out / RESULTS_MD}", flush=True)
    why_not = report.write_plot(results, out / RESULTS_PNG)
    print(f"no plot: {why_not}" if why_not else f"wrote {out / RESULTS_PNG}", flush=True)


def _flags(keys: dict[str, str]) -> list[str]:
    return [x for k, v in keys.items() for x in ("--" + k.replace("_", "-"), v)]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
