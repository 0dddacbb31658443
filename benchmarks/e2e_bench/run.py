"""The benchmark run: generate traces, size pools, start a server per (policy, trace) or per policy,
replay in-process with ``sscheduler.replay.replay_trace``, scrape ``/metrics``, save as it goes.

``e2e_results.json`` is rewritten after every replay, so a run cut short (the device call's time
limit) still leaves every finished replay on disk. A replay that fails is recorded with its error
and the tail of the server log; the run goes on and ends with status 1.
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
from context_forge.config import ServerConfig
from context_forge.model.config import ModelConfig
from sscheduler.replay import replay_trace

from . import prom, report
from .plan import PoolSizing, PreparedTrace, TraceSizes, prepare_trace, size_pool
from .server import ServerProcess, ServerStartError

RESULTS_JSON = "e2e_results.json"
RESULTS_MD = "e2e_results.md"
RESULTS_PNG = "e2e_results.png"
STOP_RESERVE_S = 20.0
"""Seconds of the budget kept for stopping the last server and writing the results."""

POLICY_ARGS: dict[str, dict[str, str]] = {
    "lru": {"radix_eviction_policy": "lru", "enable_prefetch": "false"},
    "kvflow": {"radix_eviction_policy": "kvflow", "enable_prefetch": "true"},
    "pbkv": {"radix_eviction_policy": "pbkv", "enable_prefetch": "true"},
}
"""Per-policy server keys. lru is the baseline (SGLang-style hierarchical cache, no workflow
knowledge, so nothing to prefetch); kvflow and pbkv run with the prefetcher on."""

SERVER_PER = {
    "replay": "a fresh server per (policy, trace): empty cache, fresh predictor, pool sized for that trace",
    "policy": "one server per policy replays every trace in turn; pool sized for the largest trace",
}


@dataclass
class Settings:
    config_path: Path
    out: Path
    work_dir: Path
    policies: list[str]
    traces: list[str]
    sizes: TraceSizes
    time_budget_s: float = 540.0
    server_per: str = "replay"
    max_total_tokens: int | None = None
    hicache_ratio: float | None = None
    device_fraction: float = 0.4
    server_timeout_s: float = 240.0
    replay_timeout_s: float = 120.0
    replay_concurrency: int | None = None
    server_args: dict[str, str] = field(default_factory=dict)
    smoke: bool = False
    dry_run: bool = False


def model_limits(cfg: ServerConfig) -> tuple[int, int]:
    """``(context length, vocabulary size)`` of the configured model, without loading it."""
    model = ModelConfig.preset(cfg.model_path) if cfg.is_preset else ModelConfig.from_file(cfg.model_path)
    return cfg.context_length or model.context_len, model.vocab_size


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


class Bench:
    """One benchmark run: the results dictionary, the phase clock and the time budget."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.s = settings
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + settings.time_budget_s
        self.results: dict[str, Any] = {
            "benchmark": "e2e_workflows", "version": 1, "command_line": [sys.executable, *argv],
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "config_path": str(settings.config_path), "settings": _jsonable(dataclasses.asdict(settings)),
            "policy_args": {p: _flags(POLICY_ARGS[p] | settings.server_args) for p in settings.policies},
            "server_per": settings.server_per, "server_per_note": SERVER_PER[settings.server_per],
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "traces": {}, "runs": [], "phases": [],
        }

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

    # ----- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = ServerConfig.from_sources(str(self.s.config_path), _flags(self.s.server_args))
        self.results["server_config"] = cfg.to_dict()
        context_len, vocab = model_limits(cfg)
        ratio = self.s.hicache_ratio if self.s.hicache_ratio is not None else cfg.hicache_ratio
        with self.phase("generate traces"):
            prepared = {k: prepare_trace(k, self.s.sizes, self.s.work_dir / "traces", context_len, vocab)
                        for k in self.s.traces}
        for kind, p in prepared.items():
            self.results["traces"][kind] = p.describe()
            print(f"  {kind}: {len(p.trace.requests)} requests, working set {p.working_set_tokens} tokens, "
                  f"largest request {p.max_request_tokens}, prompt tokens {p.prompt_tokens}", flush=True)
        groups = [(policy, [prepared[k] for k in kinds],
                   size_pool([prepared[k] for k in kinds], cfg.page_size, ratio, self.s.device_fraction,
                             self.s.max_total_tokens)) for policy, kinds in self._groups()]
        for kinds, sizing in {"+".join(t.kind for t in ts): s for _, ts, s in groups}.items():
            print(f"sizing for {kinds}: {sizing.rule}", flush=True)
        if self.s.dry_run:
            print("dry run: no server started", flush=True)
            return 0
        self.save()
        try:
            for policy, traces, sizing in groups:
                self._group(policy, traces, sizing)
        finally:
            self.results["machine"] = machine_info()
            self.save()
            self.write_reports()
        bad = [r for r in self.results["runs"] if r["status"] != "ok"]
        print(f"done: {len(self.results['runs']) - len(bad)} replays ok, {len(bad)} failed or skipped; "
              f"results in {self.s.out / RESULTS_JSON}", flush=True)
        return 1 if bad else 0

    def _groups(self) -> list[tuple[str, list[str]]]:
        if self.s.server_per == "policy":
            return [(p, list(self.s.traces)) for p in self.s.policies]
        return [(p, [k]) for k in self.s.traces for p in self.s.policies]

    def _group(self, policy: str, traces: list[PreparedTrace], sizing: PoolSizing) -> None:
        """One server: start, warm up, replay each trace, stop."""
        base = {"policy": policy, "sizing": sizing.to_dict()}
        if self.left() < STOP_RESERVE_S + 5:
            for t in traces:
                self.record(base | {"trace": t.kind, "status": "skipped",
                                    "error": f"time budget: {max(self.left(), 0):.0f} s left before the server start"})
            return
        overrides = POLICY_ARGS[policy] | {"enable_hierarchical_cache": "true",
                                           "max_total_tokens": str(sizing.max_total_tokens),
                                           "hicache_ratio": str(sizing.hicache_ratio)} | self.s.server_args
        name = f"{policy}-{'+'.join(t.kind for t in traces)}"
        server = ServerProcess(self.s.config_path.resolve(), overrides, self.s.work_dir / "logs" / f"{name}.log")
        info: dict[str, Any] = {"command": server.command, "log": str(server.log_path), "url": server.url}
        try:
            try:
                with self.phase(f"start server {name}"):
                    info["start_s"] = round(server.start(min(self.s.server_timeout_s, self.left() - STOP_RESERVE_S)), 3)
                with self.phase(f"warm up {name}"):
                    info["warm_up_s"] = round(server.warm_up(min(512, sizing.max_total_tokens // 4)), 3)
            except (ServerStartError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                for t in traces:
                    self.record(base | {"trace": t.kind, "status": "failed", "server": info,
                                        "error": f"server start failed: {type(exc).__name__}: {exc}"})
                return
            abandoned = ""
            for t in traces:
                run = base | {"trace": t.kind, "server": info}
                if abandoned:
                    self.record(run | {"status": "skipped", "error": abandoned})
                    continue
                run = self._replay(server, t, run)
                self.record(run)
                if run.get("timed_out"):
                    abandoned = f"the server's previous replay ({run['trace']}) was cut off with requests in flight"
        finally:
            with self.phase(f"stop server {name}"):
                info["stop_s"] = round(server.stop(), 3)
            self.save()

    def _replay(self, server: ServerProcess, t: PreparedTrace, run: dict[str, Any]) -> dict[str, Any]:
        if self.left() - STOP_RESERVE_S < 5:
            return run | {"status": "skipped", "error": f"time budget: {max(self.left(), 0):.0f} s left"}
        budget = min(self.left() - STOP_RESERVE_S, self.s.replay_timeout_s)
        if not server.alive():
            return run | {"status": "failed", "error": f"server is not running:\n{server.log_tail()}"}
        with self.phase(f"replay {t.kind} / {run['policy']}"):
            try:
                before = prom.scrape(server.url)
                t0 = time.perf_counter()
                result = asyncio.run(asyncio.wait_for(replay_trace(
                    t.trace, server.url, target="context_forge", concurrency=self.s.replay_concurrency,
                    progress=False, timeout_s=budget), timeout=budget))
                wall = time.perf_counter() - t0
                after = prom.scrape(server.url)
            except asyncio.TimeoutError:
                return run | {"status": "failed", "timed_out": True,
                              "error": f"replay did not finish within {budget:.1f} s (--replay-timeout-s "
                                       f"{self.s.replay_timeout_s:g}, {self.left():.0f} s of the time budget left)"}
            except Exception as exc:  # record every failure and go on with the next replay
                return run | {"status": "failed",
                              "error": f"{type(exc).__name__}: {exc}\n--- server log tail ---\n{server.log_tail()}"}
        metrics = prom.difference(before, after)
        summary = result.summary().to_dict()
        cache = prom.cache_stats(metrics["delta"])
        cache["uncached_prompt_tokens"] = summary["prompt_tokens"] - summary["cached_tokens"]
        print(f"  {t.kind} / {run['policy']}: makespan {summary['makespan_s']:.2f} s, mean latency "
              f"{summary['mean_latency_s']:.3f} s, cached {summary['cached_tokens']} of {summary['prompt_tokens']} "
              f"prompt tokens, recomputed {cache['uncached_prompt_tokens']}, host hit {cache['host_hit_tokens']}, "
              f"stall {cache['prefetch_stall_s']:.2f} s", flush=True)
        return run | {"status": "ok", "replay_wall_s": round(wall, 3), "summary": summary, "cache": cache,
                      "metrics": metrics, "records": [dataclasses.asdict(r) for r in result.records]}

    def write_reports(self) -> None:
        write_reports(self.results, self.s.out)


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
